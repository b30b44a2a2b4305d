"""What the platform is told: event types, their PHI-free payloads, and how each is read from a change log.

Every event comes from an append-only log row written in the same transaction as the change it reports, so an
event exists exactly when its change committed. The ``webhook-id`` is derived from that row (``evt_ne_42`` for
``notification_event`` 42), which keeps it stable across retries and replays.

A payload carries ids, refs, categories, states and reason codes, never contact data (phone, email, push token)
nor any text: free-text reasons are reduced to a fixed code by :func:`reason_code`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection
from sqlmodel import col

from worker.models import DeliveryAttempt, Device, Notification, NotificationEvent, Patient
from worker.models_consent import ConsentEvent, ConsentSource
from worker.models_replies import AppointmentReply, ReplyKind
from worker.models_scheduling import Appointment
from worker.states import State


class EventType(StrEnum):
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_DELIVERED = "notification.delivered"
    NOTIFICATION_FAILED = "notification.failed"
    NOTIFICATION_SUPPRESSED = "notification.suppressed"
    NOTIFICATION_EXPIRED = "notification.expired"
    CONSENT_CHANGED = "consent.changed"
    DEVICE_PRUNED = "device.pruned"
    APPOINTMENT_CONFIRMED = "appointment.confirmed"
    APPOINTMENT_RESCHEDULE_REQUESTED = "appointment.reschedule_requested"


#: The notification states that are events, and their type.
STATE_EVENTS: dict[State, EventType] = {
    State.SENT: EventType.NOTIFICATION_SENT,
    State.DELIVERED: EventType.NOTIFICATION_DELIVERED,
    State.FAILED: EventType.NOTIFICATION_FAILED,
    State.SUPPRESSED: EventType.NOTIFICATION_SUPPRESSED,
    State.EXPIRED: EventType.NOTIFICATION_EXPIRED,
}
REPLY_EVENTS: dict[str, EventType] = {
    ReplyKind.CONFIRMED: EventType.APPOINTMENT_CONFIRMED,
    ReplyKind.RESCHEDULE_REQUESTED: EventType.APPOINTMENT_RESCHEDULE_REQUESTED,
}


def parse_event_types(raw: str | Sequence[str]) -> list[str]:
    """``"notification.sent,consent.changed"`` (or a list) -> sorted type names; ``*`` means all. Refuses unknowns."""
    names = [n.strip() for n in (raw.split(",") if isinstance(raw, str) else raw) if n.strip()]
    if "*" in names:
        return sorted(EventType)
    unknown = [n for n in names if n not in EventType.__members__.values()]
    if unknown:
        raise ValueError(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EventType)}, or *)")
    if not names:
        raise ValueError(f"name at least one event type ({', '.join(EventType)}, or *)")
    return sorted(set(names))


# -- reason codes ------------------------------------------------------------------------------------------------

#: A notification's reason, free text written by the delivery path, reduced to a code (first match wins). Tested
#: against every reason the code writes (``tests/test_outbound_events.py``).
REASON_CODES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        (r"^accepted", "accepted"),
        (r"receipt: delivered|receipt: open|receipt: read", "delivered"),
        (r"receipt:", "provider_reported_failure"),
        (r"^expired at", "expired_before_send"),
        (r"quiet hours", "quiet_hours"),
        (r"appointment already started", "appointment_started"),
        (r"muted by patient", "muted"),
        (r"no consent", "no_consent"),
        (r"held back \(", "frequency_cap"),
        (r"unreachable|no reachable contact point", "unreachable"),
        (r"^gave up after", "retries_exhausted"),
        (r"broker gave up|internal error", "internal_error"),
        (r"patient erased", "patient_erased"),
        (r"campaign", "campaign"),
        # A provider's answer, "push/fcm: token_dead UNREGISTERED (...)": its outcome class is the code.
        (r"^[a-z]+/[\w.-]+: (accepted|retry|failed|token_dead|opted_out|config_error)\b", "provider_{0}"),
    )
)


def reason_code(reason: str | None) -> str | None:
    """A fixed code for a notification's reason (``other`` for one no pattern knows); the text is never sent."""
    if not reason:
        return None
    for pattern, code in REASON_CODES:
        match = pattern.search(reason)
        if match:
            return code.format(*match.groups())
    return "other"


def consent_reason(source: str, granted: bool, detail: str | None) -> str:
    """Why consent changed, as a code: the kind of change, never its free-text detail."""
    if source == ConsentSource.SMS_KEYWORD:
        if granted:
            return "sms_start"
        return "sms_stop" if (detail or "").startswith("keyword") else "sms_revocation"
    return {
        ConsentSource.UNSUBSCRIBE_LINK: "unsubscribe_link",
        ConsentSource.PROVIDER_REPORT: "provider_opt_out",
        ConsentSource.APP: "preference_change",
        ConsentSource.API: "preference_change",
        ConsentSource.OPERATOR: "operator",
    }.get(ConsentSource(source), "other")


# -- events read from the logs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One event before it is stored: its stable key, type, patient and payload."""

    key: str
    type: EventType
    patient_id: int | None
    occurred_at: datetime
    payload: dict[str, Any]
    #: For ordering within one read: (time, source, id).
    order: tuple[datetime, int, int]


@dataclass(frozen=True)
class Source:
    """One append-only log and how its rows become events."""

    name: str  # the cursor column's prefix: event, consent, attempt, reply
    prefix: str  # of the webhook-id
    table: Any
    time_column: Any
    rank: int


SOURCES: tuple[Source, ...] = (
    Source("event", "ne", NotificationEvent.__table__, NotificationEvent.__table__.c.at, 0),  # type: ignore[attr-defined]
    Source("consent", "ce", ConsentEvent.__table__, ConsentEvent.__table__.c.at, 1),  # type: ignore[attr-defined]
    Source("attempt", "da", DeliveryAttempt.__table__, DeliveryAttempt.__table__.c.started_at, 2),  # type: ignore[attr-defined]
    Source("reply", "ar", AppointmentReply.__table__, AppointmentReply.__table__.c.at, 3),  # type: ignore[attr-defined]
)


def _range(source: Source, after: int, upto: int, since: datetime | None) -> Any:
    table = source.table
    cond = and_(table.c.id > after, table.c.id <= upto)
    if since is not None:
        cond = and_(cond, source.time_column >= since)
    return cond


def read_events(conn: Connection, source: Source, after: int, upto: int, since: datetime | None = None) -> list[Event]:
    """The events in ``source`` rows with ``after < id <= upto`` (and at or after ``since``, for a replay)."""
    reader = {"event": _notification_events, "consent": _consent_events, "attempt": _pruned_devices}.get(
        source.name, _replies
    )
    return reader(conn, source, _range(source, after, upto, since))


def _notification_events(conn: Connection, source: Source, where: Any) -> list[Event]:
    e, n, p = NotificationEvent, Notification, Patient
    rows = conn.execute(
        select(
            col(e.id),
            col(e.notification_id),
            col(e.from_state),
            col(e.to_state),
            col(e.reason),
            col(e.at),
            col(n.patient_id),
            col(n.category),
            col(n.context),
            col(n.campaign_id),
            col(p.external_ref),
        )
        .join(n, col(n.id) == col(e.notification_id))
        .join(p, col(p.id) == col(n.patient_id))
        .where(where, col(e.to_state).in_([s.value for s in STATE_EVENTS]))
        .order_by(col(e.id))
    ).all()
    appointment_ids = {r.context.get("appointment_id") for r in rows if isinstance(r.context, dict)}
    refs = _appointment_refs(conn, {i for i in appointment_ids if isinstance(i, int)})
    events = []
    for r in rows:
        context = r.context if isinstance(r.context, dict) else {}
        payload: dict[str, Any] = {
            "notification_id": r.notification_id,
            "patient_ref": r.external_ref,
            "category": r.category,
            "state": r.to_state,
            "previous_state": r.from_state,
            "reason_code": reason_code(r.reason),
        }
        if isinstance(context.get("message_ref"), str):
            payload["message_id"] = context["message_ref"]  # the secure app's opaque id the platform sent
        if context.get("appointment_id") in refs:
            payload["appointment_ref"] = refs[context["appointment_id"]]
        if r.campaign_id is not None:
            payload["campaign_id"] = r.campaign_id
        events.append(
            Event(
                f"evt_{source.prefix}_{r.id}",
                STATE_EVENTS[State(r.to_state)],
                r.patient_id,
                r.at,
                payload,
                (r.at, source.rank, r.id),
            )
        )
    return events


def _appointment_refs(conn: Connection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = conn.execute(
        select(col(Appointment.id), col(Appointment.external_ref)).where(col(Appointment.id).in_(sorted(ids)))
    )
    return {int(i or 0): str(ref) for i, ref in rows}


def _consent_events(conn: Connection, source: Source, where: Any) -> list[Event]:
    c, p = ConsentEvent, Patient
    rows = conn.execute(
        select(
            col(c.id),
            col(c.patient_id),
            col(c.channel),
            col(c.category),
            col(c.granted),
            col(c.source),
            col(c.detail),
            col(c.at),
            col(p.external_ref),
        )
        .join(p, col(p.id) == col(c.patient_id))
        .where(where)
        .order_by(col(c.id))
    ).all()
    return [
        Event(
            f"evt_{source.prefix}_{r.id}",
            EventType.CONSENT_CHANGED,
            r.patient_id,
            r.at,
            {
                "patient_ref": r.external_ref,
                "channel": r.channel,
                "category": r.category,  # null: every category on the channel (an SMS STOP)
                "granted": bool(r.granted),
                "source": r.source,
                "reason_code": consent_reason(r.source, bool(r.granted), r.detail),
            },
            (r.at, source.rank, r.id),
        )
        for r in rows
    ]


def _pruned_devices(conn: Connection, source: Source, where: Any) -> list[Event]:
    a, n, p, d = DeliveryAttempt, Notification, Patient, Device
    rows = conn.execute(
        select(
            col(a.id),
            col(a.device_id),
            col(a.provider),
            col(a.error_code),
            col(a.started_at),
            col(n.patient_id),
            col(p.external_ref),
            col(d.platform),
        )
        .join(n, col(n.id) == col(a.notification_id))
        .join(p, col(p.id) == col(n.patient_id))
        .outerjoin(d, col(d.id) == col(a.device_id))
        .where(where, col(a.outcome) == "token_dead", col(a.device_id).is_not(None))
        .order_by(col(a.id))
    ).all()
    return [
        Event(
            f"evt_{source.prefix}_{r.id}",
            EventType.DEVICE_PRUNED,
            r.patient_id,
            r.started_at,
            {
                "device_id": r.device_id,
                "patient_ref": r.external_ref,
                "platform": r.platform,
                "provider": r.provider,
                # The provider's own code (e.g. Unregistered, BadDeviceToken), cut to a code's shape.
                "reason_code": re.sub(r"[^A-Za-z0-9_.-]", "_", r.error_code or "token_dead")[:64],
            },
            (r.started_at, source.rank, r.id),
        )
        for r in rows
    ]


def _replies(conn: Connection, source: Source, where: Any) -> list[Event]:
    r_, a, p = AppointmentReply, Appointment, Patient
    rows: Sequence[Any] = conn.execute(
        select(
            col(r_.id),
            col(r_.kind),
            col(r_.at),
            col(r_.patient_id),
            col(a.external_ref).label("appointment_ref"),
            col(a.appointment_type),
            col(p.external_ref).label("patient_ref"),
        )
        .join(a, col(a.id) == col(r_.appointment_id))
        .join(p, col(p.id) == col(r_.patient_id))
        .where(where)
        .order_by(col(r_.id))
    ).all()
    return [
        Event(
            f"evt_{source.prefix}_{r.id}",
            REPLY_EVENTS[r.kind],
            r.patient_id,
            r.at,
            {
                "appointment_ref": r.appointment_ref,
                "patient_ref": r.patient_ref,
                "appointment_type": r.appointment_type,
                "channel": "sms",
            },
            (r.at, source.rank, r.id),
        )
        for r in rows
    ]
