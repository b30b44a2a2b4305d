"""Appointments and their reminder plan.

A plan is a set of notification rows with ``not_before`` (the send time, e.g. 24 h and 2 h before) and
``expires_at`` (the start: a reminder is useless afterwards). Creating, rescheduling and cancelling change the
appointment and its plan in one transaction; delivery re-checks the appointment at send time anyway.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.categories import Category
from worker.clock import Clock
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Patient
from worker.models_replies import AppointmentTypeSetting
from worker.models_scheduling import Appointment, AppointmentStatus
from worker.outbox import add_notification, cancel_open
from worker.settings import Settings
from worker.templates import CONFIRM_TEMPLATE

CONTEXT_KEY = "appointment_id"
#: The platform's name for a kind of visit (settings per type: ``worker.confirm_by_reply``).
TYPE_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _check_start(starts_at: datetime, now: datetime) -> None:
    if starts_at.tzinfo is None:
        raise InvalidInput("starts_at", "must include a UTC offset")
    if starts_at <= now:
        raise InvalidInput("starts_at", "must be in the future")


def _reply_template(session: Session, appointment: Appointment) -> dict[str, str]:
    """Reminders of a type that asks for confirmation by reply carry the template that asks (SMS only)."""
    if not appointment.appointment_type:
        return {}
    setting = session.get(AppointmentTypeSetting, appointment.appointment_type)
    return {"template": CONFIRM_TEMPLATE} if setting is not None and setting.confirm_by_reply else {}


def _plan(session: Session, settings: Settings, appointment: Appointment, now: datetime) -> int:
    """Create the reminders of the appointment's current version that are still ahead; returns how many.

    Each reminder expires at the start, or earlier when the next reminder is due: after downtime the patient
    gets the latest useful reminder, not a 24 h and a 2 h reminder in the same minute.
    """
    assert appointment.id is not None
    offsets = sorted(set(settings.scheduling.reminder_offsets_hours), reverse=True)
    ahead = [(hours, appointment.starts_at - timedelta(hours=hours)) for hours in offsets]
    ahead = [(hours, send_at) for hours, send_at in ahead if send_at >= now]  # a passed moment is skipped
    planned = 0
    reply = _reply_template(session, appointment)
    for index, (hours, send_at) in enumerate(ahead):
        expires_at = ahead[index + 1][1] if index + 1 < len(ahead) else appointment.starts_at
        _, created = add_notification(
            session,
            now,
            patient_id=appointment.patient_id,
            category=Category.APPOINTMENT_REMINDER,
            idempotency_key=f"appt:{appointment.id}:v{appointment.version}:{hours:g}h",
            context={CONTEXT_KEY: appointment.id, "version": appointment.version, "offset_hours": hours, **reply},
            not_before=send_at,
            expires_at=expires_at,
        )
        planned += int(created)
    return planned


def create_appointment(
    engine: Engine,
    clock: Clock,
    settings: Settings,
    *,
    patient_id: int,
    external_ref: str,
    starts_at: datetime,
    appointment_type: str | None = None,
) -> int:
    """Create an appointment and plan its reminders (idempotent on ``external_ref``)."""
    now = clock.now()
    _check_start(starts_at, now)
    if appointment_type is not None and not TYPE_PATTERN.match(appointment_type):
        raise InvalidInput("appointment_type", "1 to 64 letters, digits, '.', '_' or '-'")
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        existing = session.scalars(select(Appointment).where(col(Appointment.external_ref) == external_ref)).first()
        if existing is not None:
            assert existing.id is not None
            return existing.id
        appointment = Appointment(
            patient_id=patient_id,
            external_ref=external_ref,
            starts_at=starts_at,
            appointment_type=appointment_type,
            created_at=now,
            updated_at=now,
        )
        session.add(appointment)
        session.flush()
        _plan(session, settings, appointment, now)
        assert appointment.id is not None
        return appointment.id


def _load(session: Session, external_ref: str) -> Appointment:
    appointment = session.scalars(
        select(Appointment).where(col(Appointment.external_ref) == external_ref).with_for_update()
    ).first()
    if appointment is None:
        raise NotFound("no appointment with that external_ref")
    return appointment


def reschedule_appointment(
    engine: Engine, clock: Clock, settings: Settings, *, external_ref: str, starts_at: datetime
) -> int:
    """Move the appointment: the old plan is cancelled and the new one created in the same transaction."""
    now = clock.now()
    _check_start(starts_at, now)
    with session_scope(engine) as session:
        appointment = _load(session, external_ref)
        if appointment.status == AppointmentStatus.CANCELLED:
            raise InvalidInput("external_ref", "the appointment was cancelled")
        assert appointment.id is not None
        if appointment.starts_at == starts_at:
            return appointment.id
        cancel_open(
            session,
            now,
            patient_id=appointment.patient_id,
            context_key=CONTEXT_KEY,
            value=appointment.id,
            reason="appointment rescheduled",
        )
        appointment.starts_at = starts_at
        appointment.version += 1
        appointment.updated_at = now
        # An answer was about the old time: the new one is unconfirmed until she answers again.
        appointment.confirmation = None
        appointment.confirmation_at = None
        session.add(appointment)
        session.flush()
        _plan(session, settings, appointment, now)
        return appointment.id


def cancel_appointment(engine: Engine, clock: Clock, *, external_ref: str) -> int:
    """Cancel the appointment and every reminder not yet sent."""
    now = clock.now()
    with session_scope(engine) as session:
        appointment = _load(session, external_ref)
        assert appointment.id is not None
        appointment.status = AppointmentStatus.CANCELLED
        appointment.updated_at = now
        session.add(appointment)
        cancel_open(
            session,
            now,
            patient_id=appointment.patient_id,
            context_key=CONTEXT_KEY,
            value=appointment.id,
            reason="appointment cancelled",
        )
        return appointment.id


def stale_reason(session: Session, context: dict[str, object], now: datetime) -> tuple[str, str] | None:
    """At send time: ("cancelled"|"expired", reason) if this reminder must not go, else ``None``."""
    appointment_id = context.get(CONTEXT_KEY)
    if not isinstance(appointment_id, int):
        return None
    appointment = session.get(Appointment, appointment_id)
    if appointment is None:
        return stale_for(context, None, None, None, now)
    return stale_for(context, appointment.status, appointment.version, appointment.starts_at, now)


def stale_for(
    context: dict[str, object], status: str | None, version: int | None, starts_at: datetime | None, now: datetime
) -> tuple[str, str] | None:
    """:func:`stale_reason` on the appointment's facts as read (``status`` None: the appointment is gone)."""
    if not isinstance(context.get(CONTEXT_KEY), int):
        return None
    if status is None or status == AppointmentStatus.CANCELLED:
        return "cancelled", "appointment cancelled"
    if context.get("version") != version:
        return "cancelled", "appointment rescheduled; this reminder was for the old time"
    if starts_at is not None and starts_at <= now:
        return "expired", "appointment already started"
    return None
