"""Confirm by reply: a patient answers an appointment reminder text with C (confirm) or R (reschedule).

The platform turns it on per appointment type (``appointment_type_setting``); the SMS reminders of such an
appointment end with "Reply C to confirm, R to reschedule" (:mod:`worker.templates`). A reply counts while a
reminder that asked for it is valid: it reached her by SMS and its appointment is still ahead, as planned (not
cancelled nor moved since). It maps to the patient's next such appointment, which records the answer
(``appointment.confirmation``) and appends an ``appointment_reply`` row in the same transaction; the outbound-webhook
dispatcher tells the platform from that log (``appointment.confirmed``, ``appointment.reschedule_requested``). The
2 h reminder still goes after a confirmation, unless the type says ``remind_after_confirmation = false``.

Anything else, or a C/R with no valid reminder, is left to the STOP/HELP handling of :mod:`worker.sms_inbound`.
The patient gets one acknowledgement (at most one per 5 minutes), with no detail of the appointment.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.appointments import TYPE_PATTERN
from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import consent_of
from worker.db import session_scope
from worker.errors import InvalidInput
from worker.models import DeliveryAttempt, Notification, Patient
from worker.models_replies import AppointmentReply, AppointmentTypeSetting, ReplyKind
from worker.models_scheduling import Appointment, AppointmentStatus
from worker.outbox import Enqueue, Submitted, add_notification, cancel_open
from worker.patients import normalise_phone
from worker.states import State
from worker.templates import CONFIRM_TEMPLATE

#: The ``template`` a reminder that asks for a reply carries in its context.
TEMPLATE = CONFIRM_TEMPLATE
CONTEXT_KEY = "appointment_id"
#: Whole-body answers (letters only, upper case, accents stripped: "Sí" -> SI, "yes!" -> YES).
CONFIRM_WORDS = frozenset({"C", "YES", "CONFIRM", "SI", "CONFIRMAR"})
RESCHEDULE_WORDS = frozenset({"R", "RESCHEDULE", "REPROGRAMAR"})
#: The acknowledgement's template key (:data:`worker.templates._SMS_REPLIES`).
ACK = {ReplyKind.CONFIRMED: "appointment_confirmed", ReplyKind.RESCHEDULE_REQUESTED: "appointment_reschedule"}
ACK_WINDOW = timedelta(minutes=5)  # as sms_inbound.CONFIRMATION_WINDOW
#: Reminders older than this are not looked at (a reminder is for an appointment within days).
LOOKBACK = timedelta(days=30)


def read_reply(body: str) -> ReplyKind | None:
    """C / yes / confirm / sí / si -> confirmed; R / reschedule -> reschedule requested; else ``None``."""
    plain = unicodedata.normalize("NFKD", body)
    word = re.sub(r"[^A-Za-z]", "", "".join(ch for ch in plain if not unicodedata.combining(ch))).upper()
    if word in CONFIRM_WORDS:
        return ReplyKind.CONFIRMED
    if word in RESCHEDULE_WORDS:
        return ReplyKind.RESCHEDULE_REQUESTED
    return None


# -- per appointment type ----------------------------------------------------------------------------------------


def check_type(appointment_type: str) -> str:
    if not TYPE_PATTERN.match(appointment_type):
        raise InvalidInput("appointment_type", "1 to 64 letters, digits, '.', '_' or '-'")
    return appointment_type


def set_type_setting(
    engine: Engine, clock: Clock, *, appointment_type: str, confirm_by_reply: bool, remind_after_confirmation: bool
) -> AppointmentTypeSetting:
    """Turn confirm-by-reply on or off for an appointment type (reminders planned from now on follow it)."""
    check_type(appointment_type)
    with session_scope(engine) as session:
        row = session.get(AppointmentTypeSetting, appointment_type) or AppointmentTypeSetting(
            appointment_type=appointment_type, updated_at=clock.now()
        )
        row.confirm_by_reply = confirm_by_reply
        row.remind_after_confirmation = remind_after_confirmation
        row.updated_at = clock.now()
        session.add(row)
        session.flush()
        session.expunge(row)
        return row


def type_setting(session: Session, appointment_type: str | None) -> AppointmentTypeSetting | None:
    return session.get(AppointmentTypeSetting, appointment_type) if appointment_type else None


def list_type_settings(engine: Engine) -> list[AppointmentTypeSetting]:
    with session_scope(engine) as session:
        rows = list(
            session.scalars(select(AppointmentTypeSetting).order_by(col(AppointmentTypeSetting.appointment_type)))
        )
        for row in rows:
            session.expunge(row)
        return rows


# -- answering ---------------------------------------------------------------------------------------------------


def _reminded_appointment(session: Session, patient_ids: Sequence[int], now: datetime) -> Appointment | None:
    """The next appointment one of these patients was asked about, by a reminder that is still valid."""
    reminders = session.scalars(
        select(Notification).where(
            col(Notification.patient_id).in_(list(patient_ids)),
            col(Notification.category) == Category.APPOINTMENT_REMINDER,
            col(Notification.state).in_([State.SENT, State.DELIVERED]),
            col(Notification.created_at) > now - LOOKBACK,
        )
    ).all()
    asked = [
        r for r in reminders if r.context.get("template") == TEMPLATE and isinstance(r.context.get(CONTEXT_KEY), int)
    ]
    if not asked:
        return None
    by_text = set(
        session.scalars(
            select(col(DeliveryAttempt.notification_id)).where(
                col(DeliveryAttempt.notification_id).in_([r.id for r in asked]),
                col(DeliveryAttempt.channel) == Channel.SMS,
                col(DeliveryAttempt.outcome) == "accepted",
            )
        )
    )
    best: Appointment | None = None
    for reminder in asked:
        if reminder.id not in by_text:
            continue
        appointment = session.get(Appointment, reminder.context[CONTEXT_KEY])
        if (
            appointment is None
            or appointment.status != AppointmentStatus.SCHEDULED
            or appointment.version != reminder.context.get("version")
            or appointment.starts_at <= now
        ):
            continue
        if best is None or appointment.starts_at < best.starts_at:
            best = appointment
    return best


def reply_once(session: Session, now: datetime, patient_id: int, reply: str) -> int | None:
    """Queue the one SMS reply of kind ``reply`` (an ``sms_reply`` template key), unless one went in the last
    5 minutes; returns its notification id."""
    recent = session.scalars(
        select(Notification).where(
            col(Notification.patient_id) == patient_id,
            col(Notification.category) == Category.ACCOUNT_NOTICE,
            col(Notification.created_at) > now - ACK_WINDOW,
        )
    ).all()
    if any(n.context.get("sms_reply") == reply for n in recent):
        return None
    reply_id, _ = add_notification(
        session,
        now,
        patient_id=patient_id,
        category=Category.ACCOUNT_NOTICE,
        idempotency_key=f"sms-reply:{patient_id}:{reply}:{now.isoformat()}",
        channels=[Channel.SMS],
        context={"sms_reply": reply},
    )
    return reply_id


def answer_reply(
    engine: Engine, clock: Clock, enqueue: Enqueue, *, from_number: str, kind: ReplyKind
) -> tuple[bool, Submitted | None]:
    """Apply a C/R reply. ``(False, None)``: no valid reminder asked this number, so it is not an answer."""
    try:
        phone = normalise_phone(from_number)
    except Exception:
        return False, None
    now = clock.now()
    with session_scope(engine) as session:
        ids = [p for p in session.scalars(select(col(Patient.id)).where(col(Patient.phone_e164) == phone)) if p]
        appointment = _reminded_appointment(session, ids, now) if ids else None
        if appointment is None or appointment.id is None:
            return False, None
        if appointment.confirmation != kind.value:
            appointment.confirmation = kind.value
            appointment.confirmation_at = now
            appointment.updated_at = now
            session.add(appointment)
            session.add(
                AppointmentReply(appointment_id=appointment.id, patient_id=appointment.patient_id, kind=kind, at=now)
            )
            setting = type_setting(session, appointment.appointment_type)
            if kind is ReplyKind.CONFIRMED and setting is not None and not setting.remind_after_confirmation:
                cancel_open(
                    session,
                    now,
                    patient_id=appointment.patient_id,
                    context_key=CONTEXT_KEY,
                    value=appointment.id,
                    reason="appointment confirmed by reply; its type sends no reminder after that",
                )
        if (
            consent_of(session, [appointment.patient_id])[appointment.patient_id].get((Channel.SMS.value, None))
            is False
        ):
            return True, None  # she said STOP since: the answer counts, but no more texts, not even a thank-you
        reply_id = reply_once(session, now, appointment.patient_id, ACK[kind])
    if reply_id is None:
        return True, None
    enqueue(reply_id)
    return True, Submitted(notification_id=reply_id, created=True)
