"""Pausing and lifting (written to the consent ledger), and reading a patient's pause.

Each change is one transaction: the ledger entry, and the survey notices the pause had deferred brought forward
so they are checked again at once (under the new pause, or none). A patient's changes are serialised on her
patient row, so two concurrent requests cannot both decide they are the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.care_pause.rules import REASON_PREFIX, Pause
from worker.clock import Clock
from worker.db import session_scope
from worker.errors import NotFound
from worker.models import Notification, Patient
from worker.models_consent import CarePauseEvent, ConsentSource, PauseReason
from worker.states import State

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PauseView:
    """A patient's pause in force, as the API and CLI show it (to operators: it carries the reason code)."""

    reason: PauseReason
    until: datetime | None
    hold_appointment_reminders: bool
    since: datetime
    by: str


def _pause_of(event: CarePauseEvent) -> Pause:
    return Pause(
        paused=event.paused,
        reason_code=PauseReason(event.reason_code) if event.reason_code else None,
        until=event.until,
        hold_appointment_reminders=event.hold_appointment_reminders,
        at=event.at,
    )


def _view(event: CarePauseEvent) -> PauseView:
    assert event.reason_code is not None
    return PauseView(
        reason=PauseReason(event.reason_code),
        until=event.until,
        hold_appointment_reminders=event.hold_appointment_reminders,
        since=event.at,
        by=event.actor,
    )


def _latest(session: Session, patient_id: int) -> CarePauseEvent | None:
    return session.scalars(
        select(CarePauseEvent)
        .where(col(CarePauseEvent.patient_id) == patient_id)
        .order_by(col(CarePauseEvent.id).desc())
        .limit(1)
    ).first()


def _lock_patient(session: Session, patient_id: int) -> None:
    if session.get(Patient, patient_id, with_for_update=True) is None:
        raise NotFound(f"patient {patient_id} does not exist")


def _wake_deferred(session: Session, patient_id: int, now: datetime) -> int:
    """Her notices a pause deferred are due now: the relay queues them and every rule is applied again."""
    result = session.execute(
        update(Notification)
        .where(
            col(Notification.patient_id) == patient_id,
            col(Notification.state) == State.DEFERRED,
            col(Notification.reason).startswith(REASON_PREFIX),
        )
        .values(not_before=now, enqueued_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def current_pause(engine: Engine, clock: Clock, patient_id: int) -> PauseView | None:
    """Her pause in force now, or ``None`` (never paused, lifted, or ended)."""
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        event = _latest(session, patient_id)
        if event is None or not _pause_of(event).active(clock.now()):
            return None
        return _view(event)


def set_pause(
    engine: Engine,
    clock: Clock,
    *,
    patient_id: int,
    reason: PauseReason,
    until: datetime | None,
    hold_appointment_reminders: bool,
    source: ConsentSource,
    actor: str,
) -> tuple[PauseView, bool]:
    """Pause her (or change her pause) until ``until`` (``None``: until lifted). Returns the pause in force and
    whether anything changed: the same pause asked for again writes nothing."""
    now = clock.now()
    with session_scope(engine) as session:
        _lock_patient(session, patient_id)
        latest = _latest(session, patient_id)
        if (
            latest is not None
            and _pause_of(latest).active(now)
            and (latest.reason_code, latest.until, latest.hold_appointment_reminders)
            == (reason.value, until, hold_appointment_reminders)
        ):
            return _view(latest), False
        event = CarePauseEvent(
            patient_id=patient_id,
            paused=True,
            reason_code=reason,
            until=until,
            hold_appointment_reminders=hold_appointment_reminders,
            source=source,
            actor=actor[:128],
            at=now,
        )
        session.add(event)
        woken = _wake_deferred(session, patient_id, now)
        session.flush()
        view = _view(event)
    # Ids and flags only: the reason code is health information and stays out of logs.
    log.info("care_pause.set", pause_event_id=event.id, indefinite=until is None, rechecked=woken)
    return view, True


def lift_pause(engine: Engine, clock: Clock, *, patient_id: int, source: ConsentSource, actor: str) -> bool:
    """Lift her pause; ``False`` (nothing written) if none was in force. What it deferred is due at once."""
    now = clock.now()
    with session_scope(engine) as session:
        _lock_patient(session, patient_id)
        latest = _latest(session, patient_id)
        if latest is None or not _pause_of(latest).active(now):
            return False
        event = CarePauseEvent(
            patient_id=patient_id,
            paused=False,
            hold_appointment_reminders=False,
            source=source,
            actor=actor[:128],
            at=now,
        )
        session.add(event)
        woken = _wake_deferred(session, patient_id, now)
        session.flush()
    log.info("care_pause.lifted", pause_event_id=event.id, rechecked=woken)
    return True


def latest_pauses(session: Session, patient_ids: Sequence[int]) -> dict[int, Pause]:
    """Each patient's latest ledger entry (send time, portable path), in one query."""
    newest = (
        select(func.max(col(CarePauseEvent.id)))
        .where(col(CarePauseEvent.patient_id).in_(list(patient_ids)))
        .group_by(col(CarePauseEvent.patient_id))
    )
    events = session.scalars(select(CarePauseEvent).where(col(CarePauseEvent.id).in_(newest)))
    return {event.patient_id: _pause_of(event) for event in events}


def paused_now(patient_id: Any, now: datetime) -> ColumnElement[bool]:
    """SQL: the patient ``patient_id`` refers to has a pause in force at ``now`` (campaign fan-out)."""
    table = CarePauseEvent.__table__.alias("pz")  # type: ignore[attr-defined]
    earlier = CarePauseEvent.__table__.alias("pz_all")  # type: ignore[attr-defined]
    newest = (
        select(func.max(earlier.c.id))
        .where(earlier.c.patient_id == patient_id)
        .correlate_except(earlier)
        .scalar_subquery()
    )
    return exists().where(
        table.c.patient_id == patient_id,
        table.c.id == newest,
        table.c.paused.is_(True),
        or_(table.c.until.is_(None), table.c.until > now),
    )


def pause_from_columns(
    paused: bool | None,
    reason_code: str | None,
    until: datetime | None,
    hold_appointment_reminders: bool | None,
    at: datetime | None,
) -> Pause | None:
    """The PostgreSQL fast path's raw columns (``NULL`` when she has no entry) as a :class:`Pause`."""
    if paused is None or at is None:
        return None
    return Pause(
        paused=bool(paused),
        reason_code=PauseReason(reason_code) if reason_code else None,
        until=until,
        hold_appointment_reminders=bool(hold_appointment_reminders),
        at=at,
    )
