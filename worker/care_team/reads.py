"""Read receipts: the platform says she read a care-team message.

Reading any message of a digest (its head notice or one folded into it) reads the digest: she opened the thread
where all of them are. From then on a new message notifies again, the follow-up is called off (not made, or
cancelled if it has not gone out yet; one already sending or sent stays as it is), and a notice still waiting to
go out (a retry) is cancelled. Idempotent: the first report's time stands and a repeat changes nothing.

The rows are locked in a fixed order (the message's own record, then its head's), the same head row a fold
updates and the escalation scan locks, so a read, a fold and a scan of one digest never interleave.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.clock import Clock
from worker.db import session_scope
from worker.errors import NotFound
from worker.models import Notification
from worker.models_care_team import CareTeamMessage, Escalation
from worker.outbox import OPEN_STATES, transition
from worker.states import State

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ReadReceipt:
    notification_id: int
    #: The first reported read (a repeat keeps it).
    read_at: datetime
    #: This report was the first for the message.
    first: bool
    #: The digest's follow-up after this read: ``cancelled``, ``escalated`` (already made and gone out or going),
    #: ``not_escalated``, or ``None`` for a notice that had none.
    escalation: str | None
    escalation_id: int | None


def mark_read(engine: Engine, clock: Clock, *, idempotency_key: str) -> ReadReceipt:
    """Record that the message whose notice has ``idempotency_key`` was read; NotFound if there is no such notice."""
    now = clock.now()
    with session_scope(engine) as session:
        notice = session.scalars(
            select(Notification).where(col(Notification.idempotency_key) == idempotency_key)
        ).first()
        if notice is None or notice.id is None:
            raise NotFound("no care-team message notice has this message_id")
        own = session.get(CareTeamMessage, notice.id, with_for_update=True)
        if own is None:  # a notice made before the digest existed (migration 0050): nothing to stop, only record
            own = CareTeamMessage(notification_id=notice.id, patient_id=notice.patient_id, created_at=notice.created_at)
        first = own.read_at is None
        own.read_at = own.read_at or now
        session.add(own)
        head = own
        if own.digest_of is not None:
            head = session.get(CareTeamMessage, own.digest_of, with_for_update=True) or own
        if head.read_at is None:
            head.read_at = now
            session.add(head)
        _stop_follow_up(session, head, now)
        for notice_id in {own.notification_id, head.notification_id}:
            _cancel_unsent(session, notice_id, "read in the secure app before the notice went out", now)
        read_at = own.read_at
        assert read_at is not None
        receipt = ReadReceipt(
            notification_id=notice.id,
            read_at=read_at,
            first=first,
            escalation=str(head.escalation) if head.escalation else None,
            escalation_id=head.escalation_id,
        )
    if first:
        log.info("care_team.read", notification_id=receipt.notification_id, escalation=receipt.escalation)
    return receipt


def _stop_follow_up(session: Session, head: CareTeamMessage, now: datetime) -> None:
    if head.escalation == Escalation.WAITING or head.escalate_at is not None:
        head.escalate_at = None
        head.escalation = Escalation.CANCELLED
        head.escalation_reason = f"read at {now.isoformat()}, before the follow-up was due"
        session.add(head)
        return
    if head.escalation == Escalation.ESCALATED and head.escalation_id is not None:
        why = "read in the secure app before the follow-up went out"
        if _cancel_unsent(session, head.escalation_id, why, now):
            head.escalation = Escalation.CANCELLED
            head.escalation_reason = f"{head.escalation_reason}; cancelled: read at {now.isoformat()}"[:500]
            session.add(head)


def _cancel_unsent(session: Session, notification_id: int, reason: str, now: datetime) -> bool:
    """Cancel a notification not claimed yet (locked, so a worker's claim either came first or waits)."""
    row = session.get(Notification, notification_id, with_for_update=True, populate_existing=True)
    if row is None or State(row.state) not in OPEN_STATES:
        return False
    transition(session, row, State.CANCELLED, reason=reason, now=now)
    return True
