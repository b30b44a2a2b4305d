"""The consent ledger (``consent_event``, ``care_pause_event``) is kept ``retention.consent_years`` after an entry
stopped being in force.

An entry is in force until the next entry for the same thing (a patient's channel and category; her pause)
replaces it; it may go once that next entry is itself older than the cutoff, so the evidence for every message
sent within the look-back period stays. A patient's latest entries are never deleted: they are her consent and
her pause now (deleting an old opt-out would re-open marketing to her).

Both tables are walked by primary key from where the last batch stopped (ids grow with ``at``) until an entry
newer than the cutoff; the "replaced" check is an index probe (``ix_consent_event_lookup``,
``ix_care_pause_event_patient``). One short transaction per batch.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import col

from worker.models_consent import CarePauseEvent, ConsentEvent
from worker.retention.notifications import Step

LEDGERS = ("consent_event", "care_pause_event")


def _replaced(model: Any, cutoff: datetime) -> Any:
    """SQL: a later entry for the same thing, itself older than the cutoff, replaced this one."""
    later = aliased(model)
    same: list[Any] = [later.patient_id == model.patient_id, later.id > model.id, later.at < cutoff]
    if model is ConsentEvent:
        same += [later.channel == model.channel, later.category.is_not_distinct_from(model.category)]
    return exists().where(*same)


def _model(table: str) -> Any:
    return ConsentEvent if table == "consent_event" else CarePauseEvent


def purge_step(engine: Engine, table: str, cutoff: datetime, *, after: int, batch_size: int) -> Step:
    """Delete the replaced entries older than ``cutoff`` among the next ``batch_size`` ids of ``table``."""
    model = _model(table)
    deleted: Counter[str] = Counter()
    with engine.begin() as conn:
        rows = conn.execute(
            select(col(model.id), col(model.at)).where(col(model.id) > after).order_by(col(model.id)).limit(batch_size)
        ).all()
        if not rows:
            return Step(deleted, after, True, 0)
        finished = len(rows) < batch_size or any(at >= cutoff for _, at in rows)
        old = [int(i) for i, at in rows if at < cutoff]
        if old:
            result = conn.execute(
                delete(model)
                .where(col(model.id).in_(old), _replaced(model, cutoff))
                .execution_options(synchronize_session=False)
            )
            deleted[table] = int(result.rowcount)
    return Step(deleted, int(rows[-1][0]), finished, len(rows))


def due_counts(engine: Engine, cutoff: datetime) -> dict[str, int]:
    """What a full purge would delete now, per ledger table."""
    counts = {}
    with engine.connect() as conn:
        for table in LEDGERS:
            model = _model(table)
            counts[table] = int(
                conn.scalar(select(func.count()).select_from(model).where(_replaced(model, cutoff))) or 0
            )
    return counts
