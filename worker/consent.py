"""Recording and reading consent (the append-only ledger in :mod:`worker.models_consent`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlmodel import Session, col

from worker.categories import Category, Channel
from worker.models_consent import ConsentEvent, ConsentSource

#: (channel, category or None for the whole channel) -> granted
ConsentState = dict[tuple[str, str | None], bool]


def record_consent(
    session: Session,
    *,
    patient_id: int,
    channel: Channel,
    category: Category | None,
    granted: bool,
    source: ConsentSource,
    actor: str,
    at: datetime,
    detail: str | None = None,
) -> ConsentEvent:
    """Append one consent change in the caller's transaction (so it commits with whatever caused it)."""
    event = ConsentEvent(
        patient_id=patient_id,
        channel=Channel(channel).value,
        category=Category(category).value if category is not None else None,
        granted=granted,
        source=ConsentSource(source),
        actor=actor[:128],
        detail=detail[:300] if detail else None,
        at=at,
    )
    session.add(event)
    return event


def current_consent(session: Session, patient_id: int) -> ConsentState:
    """The latest event wins for each (channel, category) pair."""
    return consent_of(session, [patient_id])[patient_id]


def consent_of(session: Session, patient_ids: Sequence[int]) -> dict[int, ConsentState]:
    """:func:`current_consent` for many patients in one query (a delivery batch)."""
    states: dict[int, ConsentState] = {pid: {} for pid in patient_ids}
    rows = session.execute(
        select(
            col(ConsentEvent.patient_id),
            col(ConsentEvent.channel),
            col(ConsentEvent.category),
            col(ConsentEvent.granted),
        )
        .where(col(ConsentEvent.patient_id).in_(list(patient_ids)))
        .order_by(col(ConsentEvent.id))
    )
    for patient_id, channel, category, granted in rows:
        states[patient_id][(channel, category)] = granted
    return states


def consent_from(events: Iterable[tuple[str, str | None, bool]]) -> ConsentState:
    """A patient's consent from her ledger entries ``(channel, category, granted)`` in ledger order."""
    return {(channel, category): granted for channel, category, granted in events}
