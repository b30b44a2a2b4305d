"""Delivery receipts: Twilio status callbacks and SendGrid events move a SENT notification to DELIVERED or
FAILED, and provider-reported opt-outs become consent events. Idempotent: a repeated receipt changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from integrations.base import Outcome
from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import record_consent
from worker.db import session_scope
from worker.models import DeliveryAttempt, Notification
from worker.models_consent import ConsentSource
from worker.outbox import transition
from worker.states import State

log = structlog.get_logger(__name__)

TWILIO_FAILED = frozenset({"undelivered", "failed"})
SENDGRID_FAILED = frozenset({"bounce", "dropped"})
SENDGRID_OPT_OUT = frozenset({"unsubscribe", "group_unsubscribe", "spamreport"})


def _settle_receipt(
    session: Session,
    notification: Notification,
    attempt: DeliveryAttempt,
    *,
    delivered: bool,
    reason: str,
    clock: Clock,
) -> str:
    """Apply one receipt for one accepted attempt; returns what happened (for logs and the webhook answer)."""
    attempt.detail = reason[:500]
    session.add(attempt)
    state = State(notification.state)
    if delivered:
        if state is State.SENT:
            transition(session, notification, State.DELIVERED, reason=reason, now=clock.now())
            return "delivered"
        return "ignored"
    if state is not State.SENT:
        return "ignored"
    # Failed on this target: the notification only fails if nothing else reached the patient.
    others = session.scalar(
        select(col(DeliveryAttempt.id)).where(
            col(DeliveryAttempt.notification_id) == notification.id,
            col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
            col(DeliveryAttempt.id) != attempt.id,
        )
    )
    if others is not None:
        return "noted"
    transition(session, notification, State.FAILED, reason=reason, now=clock.now())
    return "failed"


def apply_twilio_status(engine: Engine, clock: Clock, form: Mapping[str, str]) -> str:
    """One Twilio status callback (form fields MessageSid, MessageStatus, ErrorCode)."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    error = form.get("ErrorCode") or None
    if not sid or status not in TWILIO_FAILED | {"delivered"}:
        return "ignored"
    with session_scope(engine) as session:
        attempt = session.scalars(
            select(DeliveryAttempt).where(
                col(DeliveryAttempt.provider_ref) == sid, col(DeliveryAttempt.channel) == Channel.SMS.value
            )
        ).first()
        if attempt is None:
            return "unknown"
        notification = session.get(Notification, attempt.notification_id)
        if notification is None:
            return "unknown"
        if error == "21610":
            record_consent(
                session,
                patient_id=notification.patient_id,
                channel=Channel.SMS,
                category=None,
                granted=False,
                source=ConsentSource.PROVIDER_REPORT,
                actor=attempt.provider,
                at=clock.now(),
                detail="twilio 21610",
            )
        reason = f"{attempt.provider} receipt: {status}" + (f" (error {error})" if error else "")
        result = _settle_receipt(
            session, notification, attempt, delivered=status == "delivered", reason=reason, clock=clock
        )
    log.info("receipt.twilio", notification_id=attempt.notification_id, status=status, result=result)
    return result


#: Notification ids are BIGINT: anything larger is not one of ours (and would overflow the query).
_MAX_ID = 2**63 - 1


def _notification_id(raw: object) -> int | None:
    """Our ``notification_id`` custom arg (a string of ASCII digits, or a number), or None if it cannot be one.

    ``str.isdigit`` alone also accepts "²" and other Unicode digits that ``int`` refuses.
    """
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None
    text = str(raw)
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        return None
    value = int(text)
    return value if 1 <= value <= _MAX_ID else None


def apply_sendgrid_events(engine: Engine, clock: Clock, events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """A batch of SendGrid Event Webhook events; matched by our ``notification_id`` custom arg."""
    counts: dict[str, int] = {}
    for event in events:
        kind = str(event.get("event", ""))
        notification_id = _notification_id(event.get("notification_id"))
        result = "ignored"
        if notification_id is not None:
            result = _apply_sendgrid_event(engine, clock, notification_id, kind, event)
        counts[result] = counts.get(result, 0) + 1
    return counts


def _apply_sendgrid_event(
    engine: Engine, clock: Clock, notification_id: int, kind: str, event: Mapping[str, Any]
) -> str:
    if kind not in SENDGRID_FAILED | SENDGRID_OPT_OUT | {"delivered"}:
        return "ignored"
    with session_scope(engine) as session:
        notification = session.get(Notification, notification_id)
        if notification is None:
            return "unknown"
        attempt = session.scalars(
            select(DeliveryAttempt)
            .where(
                col(DeliveryAttempt.notification_id) == notification_id,
                col(DeliveryAttempt.channel) == Channel.EMAIL.value,
                col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value,
            )
            .order_by(col(DeliveryAttempt.id).desc())
        ).first()
        if attempt is None:
            return "unknown"
        if kind in SENDGRID_OPT_OUT:
            record_consent(
                session,
                patient_id=notification.patient_id,
                channel=Channel.EMAIL,
                category=Category.MARKETING,
                granted=False,
                source=ConsentSource.PROVIDER_REPORT,
                actor=attempt.provider,
                at=clock.now(),
                detail=f"sendgrid {kind}",
            )
            return "opted_out"
        reason = f"{attempt.provider} receipt: {kind}"
        return _settle_receipt(
            session, notification, attempt, delivered=kind == "delivered", reason=reason, clock=clock
        )
