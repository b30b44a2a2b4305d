"""The follow-up of a care-team message still unread: one more notice, on the next channel, once.

The scheduler's ``care_team_escalation`` job finds head notices whose ``escalate_at`` has come (the partial index
``ix_care_team_message_due`` holds only those still waiting), locked ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so
two schedulers never take the same one, and for each makes one notification in the same transaction: its
idempotency key (``care_team_escalation:<head id>``) is unique, so a follow-up exists at most once whatever runs
twice. Outbox order: committed first, then queued (the relay queues it if this process dies in between).

The follow-up is a care-team notice with the escalation text (PHI-free, :mod:`worker.templates`) on one channel
(:mod:`worker.care_team.channels`), marked to wait for her quiet hours at send time (``context.quiet_hours``),
and its creation event says why it was made. A read that arrives first stops it (:mod:`worker.care_team.reads`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from integrations.base import Outcome
from worker.care_team.channels import Choice, next_channel
from worker.care_team.rules import duration_text
from worker.categories import Category, Channel
from worker.clock import Clock
from worker.consent import consent_of
from worker.db import session_scope
from worker.models import DeliveryAttempt, Device, Notification, Patient, Preference
from worker.models_care_team import CareTeamMessage, Escalation
from worker.outbox import add_notification, mark_enqueued
from worker.settings import CareTeamSettings

log = structlog.get_logger(__name__)

#: A follow-up not sent within this long (quiet hours, a provider outage) expires: by then it is news to nobody.
FOLLOW_UP_TTL = timedelta(hours=24)
#: Batches one scan takes at most; the rest waits for the next tick.
MAX_BATCHES = 20
ESCALATION_TEMPLATE = "escalation"


def escalation_key(head_id: int) -> str:
    """The follow-up's idempotency key: one per head notice, ever."""
    return f"care_team_escalation:{head_id}"


@dataclass(frozen=True)
class Scan:
    escalated: int = 0
    not_escalated: int = 0


def escalate_due(
    engine: Engine, clock: Clock, enqueue_many: Callable[[Sequence[int]], None], settings: CareTeamSettings
) -> Scan:
    """Escalate every notice that came due (batch by batch); returns how many were escalated or could not be."""
    escalated = not_escalated = 0
    for _ in range(MAX_BATCHES):
        made, skipped, seen = _one_batch(engine, clock, settings)
        if made:
            enqueue_many(made)
            mark_enqueued(engine, made, clock.now())
        escalated += len(made)
        not_escalated += skipped
        if seen < settings.escalation_batch_size:
            break
    if escalated or not_escalated:
        log.info("care_team.escalation_scan", escalated=escalated, not_escalated=not_escalated)
    return Scan(escalated=escalated, not_escalated=not_escalated)


def _one_batch(engine: Engine, clock: Clock, settings: CareTeamSettings) -> tuple[list[int], int, int]:
    """One transaction: lock a batch of due notices (skipping those another scheduler holds), settle each."""
    now = clock.now()
    made: list[int] = []
    skipped = 0
    with session_scope(engine) as session:
        due = session.scalars(
            select(CareTeamMessage)
            .where(col(CareTeamMessage.escalate_at).is_not(None), col(CareTeamMessage.escalate_at) <= now)
            .order_by(col(CareTeamMessage.escalate_at))
            .limit(settings.escalation_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not due:
            return [], 0, 0
        facts = _Facts.load(session, due)
        for message in due:
            follow_up = _settle(session, message, facts, now, settings)
            if follow_up is None:
                skipped += 1
            elif follow_up > 0:
                made.append(follow_up)
    return made, skipped, len(due)


@dataclass
class _Facts:
    """What choosing a channel needs, for a whole batch in a fixed number of queries."""

    notices: dict[int, Notification]
    patients: dict[int, Patient]
    devices: dict[int, list[Device]]
    preferences: dict[int, list[Preference]]
    consent: dict[int, dict[tuple[str, str | None], bool]]
    reached: dict[int, set[Channel]]

    @classmethod
    def load(cls, session: Session, due: Sequence[CareTeamMessage]) -> _Facts:
        ids = [m.notification_id for m in due]
        patient_ids = sorted({m.patient_id for m in due})
        devices: dict[int, list[Device]] = defaultdict(list)
        preferences: dict[int, list[Preference]] = defaultdict(list)
        reached: dict[int, set[Channel]] = defaultdict(set)
        for device in session.scalars(select(Device).where(col(Device.patient_id).in_(patient_ids))):
            devices[device.patient_id].append(device)
        for preference in session.scalars(select(Preference).where(col(Preference.patient_id).in_(patient_ids))):
            preferences[preference.patient_id].append(preference)
        for notification_id, channel in session.execute(
            select(col(DeliveryAttempt.notification_id), col(DeliveryAttempt.channel)).where(
                col(DeliveryAttempt.notification_id).in_(ids), col(DeliveryAttempt.outcome) == Outcome.ACCEPTED.value
            )
        ):
            reached[notification_id].add(Channel(channel))
        return cls(
            notices={n.id or 0: n for n in session.scalars(select(Notification).where(col(Notification.id).in_(ids)))},
            patients={p.id or 0: p for p in session.scalars(select(Patient).where(col(Patient.id).in_(patient_ids)))},
            devices=devices,
            preferences=preferences,
            consent=consent_of(session, patient_ids),
            reached=reached,
        )


def _settle(
    session: Session, message: CareTeamMessage, facts: _Facts, now: datetime, settings: CareTeamSettings
) -> int | None:
    """Make the follow-up (its id; 0 if it existed already) or record why there is none (``None``)."""
    head_id = message.notification_id
    after = settings.urgent_escalate_after if message.urgent else settings.escalate_after
    unread = f"message unread {duration_text(after)} after its notice" + (" (urgent)" if message.urgent else "")
    message.escalate_at = None
    patient = facts.patients.get(message.patient_id)
    choice = (
        next_channel(
            patient=patient,
            devices=facts.devices[message.patient_id],
            preferences=facts.preferences[message.patient_id],
            consent=facts.consent.get(message.patient_id, {}),
            reached=facts.reached[head_id],
        )
        if patient is not None
        else Choice(None, ("patient erased",))
    )
    if choice.channel is None:
        message.escalation = Escalation.NOT_ESCALATED
        left = "; ".join(choice.passed_over)
        message.escalation_reason = f"not escalated: {unread}, but no channel is left ({left})"[:500]
        session.add(message)
        log.info("care_team.not_escalated", notification_id=head_id)
        return None
    passed = f" ({'; '.join(choice.passed_over)})" if choice.passed_over else ""
    reason = f"escalation of notification {head_id}: {unread}; follow-up on {choice.channel}{passed}"
    notice = facts.notices.get(head_id)
    follow_up, created = add_notification(
        session,
        now,
        patient_id=message.patient_id,
        category=Category.CARE_TEAM_MESSAGE,
        idempotency_key=escalation_key(head_id),
        channels=[choice.channel],
        context={
            "escalates": head_id,
            "template": ESCALATION_TEMPLATE,
            # Unlike the first notice, a follow-up can wait for the morning (worker.delivery.policy).
            "quiet_hours": True,
            **({"message_ref": notice.context.get("message_ref")} if notice is not None else {}),
        },
        expires_at=now + FOLLOW_UP_TTL,
        created_reason=reason,
    )
    message.escalation = Escalation.ESCALATED
    message.escalation_id = follow_up
    message.escalation_reason = reason[:500]
    session.add(message)
    log.info("care_team.escalated", notification_id=head_id, follow_up_id=follow_up, channel=str(choice.channel))
    return follow_up if created else 0
