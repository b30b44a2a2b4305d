"""Creating notifications (the outbox rows) and moving them through the state machine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from psycopg.types.json import Json
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from worker.categories import Category, Channel
from worker.clock import Clock
from worker.db import pyformat, retry_transient, run_raw, session_scope
from worker.errors import IllegalTransition, InvalidInput, NotFound
from worker.models import Notification, NotificationEvent, Patient
from worker.models_care_team import CareTeamMessage, Escalation
from worker.outbox import digest as care_digest
from worker.outbox.digest import DigestRule
from worker.outbox.stamps import EnqueueStamps
from worker.states import TERMINAL, State, can_transition

log = structlog.get_logger(__name__)

#: Puts one ``deliver(notification_id)`` message on the broker.
Enqueue = Callable[[int], None]


def id_of(row: Notification) -> int:
    """The row's id; an unflushed row has none, and asking for it is a bug."""
    if row.id is None:
        raise ValueError("notification has no id yet (not flushed)")
    return row.id


def transition(
    session: Session, notification: Notification, target: State, *, reason: str | None, now: datetime
) -> None:
    """Move ``notification`` to ``target`` and write the event down. Raises on a transition not allowed."""
    source = State(notification.state)
    if not can_transition(source, target):
        raise IllegalTransition(f"notification {notification.id}: {source} -> {target} is not allowed")
    notification.state = target
    notification.reason = reason[:500] if reason else None
    notification.updated_at = now
    if target in TERMINAL:
        notification.finished_at = now
        notification.lease_until = None
        notification.claimed_by = None
    session.add(notification)
    session.add(
        NotificationEvent(
            notification_id=id_of(notification), from_state=source, to_state=target, reason=reason, at=now
        )
    )


@dataclass(frozen=True)
class Submitted:
    notification_id: int
    created: bool  # False when the idempotency key was seen before
    #: The row is terminal already, so nothing is queued: a care-team notice folded into an unread one at birth
    #: (:mod:`worker.outbox.digest`), or a known key whose notification has settled.
    settled: bool = False


def submit(
    engine: Engine,
    clock: Clock,
    enqueue: Enqueue,
    *,
    patient_id: int,
    category: Category | str,
    idempotency_key: str,
    channels: list[Channel] | None = None,
    context: dict[str, Any] | None = None,
    not_before: datetime | None = None,
    expires_at: datetime | None = None,
    ttl: timedelta | None = None,
    stamps: EnqueueStamps | None = None,
    digest: DigestRule | None = None,
) -> Submitted:
    """Commit a notification row, then enqueue it (outbox order: nothing is sent that is not stored).

    The same idempotency key returns the existing notification instead of a second one. A row whose
    ``not_before`` lies ahead is not enqueued now: the relay queues it when it becomes due. With ``stamps`` the
    row is marked queued in the background (:mod:`worker.outbox.stamps`), else at once. With ``digest``, a notice
    for a care-team message may fold into an unread one instead of being sent (:mod:`worker.outbox.digest`).
    """
    try:
        category = Category(category)
    except ValueError:
        raise InvalidInput("category", f"unknown category (known: {', '.join(Category)})") from None
    if not idempotency_key or len(idempotency_key) > 200:
        raise InvalidInput("idempotency_key", "must be 1 to 200 characters")
    for name, value in (("not_before", not_before), ("expires_at", expires_at)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(name, "must be a timezone-aware instant")
    now = clock.now()
    if expires_at is None and ttl is not None:
        expires_at = (not_before or now) + ttl

    due = not_before is None or not_before <= now
    fields = {
        "patient_id": patient_id,
        "category": category,
        "idempotency_key": idempotency_key,
        "channels": channels,
        "context": context,
        "not_before": not_before,
        "expires_at": expires_at,
    }
    rule = digest if digest is not None and care_digest.applies(category, context) else None
    found = _insert_pg(engine, now, rule, **fields) if engine.dialect.name == "postgresql" else None
    if found is None:
        found = _insert_portable(engine, now, rule, **fields)
    notification_id, created, state = found
    if not created:
        return Submitted(notification_id=notification_id, created=False, settled=state in TERMINAL)
    if state is State.FOLDED:
        log.info("notification.folded", notification_id=notification_id)
        return Submitted(notification_id=notification_id, created=True, settled=True)
    if due:
        # After the commit: a crash before this line leaves the row unstamped, and the relay queues it.
        epoch = stamps.epoch_before_enqueue() if stamps is not None else None
        enqueue(notification_id)
        if stamps is not None:
            stamps.add(notification_id, epoch)
        else:
            mark_enqueued(engine, [notification_id], clock.now())
    log.info("notification.created", notification_id=notification_id, category=str(category))
    return Submitted(notification_id=notification_id, created=True)


_SUBMIT_PG = pyformat(
    """
WITH created AS (
    INSERT INTO notification (patient_id, category, channels, context, idempotency_key, state, not_before,
                              expires_at, attempt_count, enqueued_at, created_at, updated_at)
    SELECT :patient_id, :category, :channels, :context, :idempotency_key, 'pending', :not_before,
           :expires_at, 0, NULL, :now, :now
     WHERE EXISTS (SELECT 1 FROM patient WHERE id = :patient_id)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), created_event AS (
    INSERT INTO notification_event (notification_id, from_state, to_state, reason, at)
    SELECT id, NULL, 'pending', 'created', :now FROM created
)
SELECT id, true AS created, 'pending' AS state FROM created
UNION ALL
SELECT id, false, state FROM notification WHERE idempotency_key = :idempotency_key
"""
)


def _insert_pg(engine: Engine, now: datetime, rule: DigestRule | None, **fields: Any) -> tuple[int, bool, State] | None:
    """PostgreSQL: the row and its creation event in one statement, in autocommit (one round trip).

    ``None`` when it could not tell (no such patient, or a concurrent writer of the same key not yet visible):
    the portable path then answers with the precise reason.
    """
    values = {
        **fields,
        "category": Category(fields["category"]).value,
        "channels": Json([Channel(c).value for c in fields["channels"]]) if fields["channels"] else None,
        "context": Json(fields["context"] or {}),
        "now": now,
    }
    if rule is not None:
        values.update(care_digest.pg_params(rule, now, fields["context"]))

    def run() -> tuple[int, bool, State] | None:
        rows = run_raw(engine, _SUBMIT_PG if rule is None else care_digest.SUBMIT_PG, values)
        if not rows:
            return None
        created = [r for r in rows if r["created"]]
        first = created[0] if created else rows[0]
        return int(first["id"]), bool(created), State(first["state"])

    return retry_transient(run, seconds=10.0)


def _insert_portable(engine: Engine, now: datetime, rule: DigestRule | None, **fields: Any) -> tuple[int, bool, State]:
    patient_id, idempotency_key = fields["patient_id"], fields["idempotency_key"]
    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        try:
            with session.begin_nested():
                notification_id, created = add_notification(session, now, **fields)
                if created and rule is not None:
                    _record_care_team(session, notification_id, now, rule, fields["context"])
        except IntegrityError:
            # Lost a race with the same key: the other writer's row stands.
            notification_id, created = _id_of_key(session, idempotency_key), False
        state = session.scalars(select(col(Notification.state)).where(col(Notification.id) == notification_id)).one()
        return notification_id, created, State(state)


def _id_of_key(session: Session, idempotency_key: str) -> int:
    found = session.scalars(
        select(col(Notification.id)).where(col(Notification.idempotency_key) == idempotency_key)
    ).one()
    assert found is not None
    return found


def _record_care_team(
    session: Session, notification_id: int, now: datetime, rule: DigestRule, context: dict[str, Any] | None
) -> None:
    """The new notice's ``care_team_message`` record; folded into the patient's unread head notice if any."""
    row = session.get(Notification, notification_id)
    assert row is not None
    urgent = bool((context or {}).get("urgent"))
    due = rule.escalate_at(now, urgent=urgent)
    head = care_digest.open_head(session, row.patient_id, now, rule)
    if head is not None:
        if head.escalate_at is not None:  # an urgent message brings its head's follow-up forward
            head.escalate_at = min(head.escalate_at, due)
            session.add(head)
        transition(session, row, State.FOLDED, reason=care_digest.fold_reason(head.notification_id, rule), now=now)
    session.add(
        CareTeamMessage(
            notification_id=notification_id,
            patient_id=row.patient_id,
            created_at=now,
            urgent=urgent,
            digest_of=head.notification_id if head is not None else None,
            escalate_at=None if head is not None else due,
            escalation=None if head is not None else Escalation.WAITING,
        )
    )


def add_notification(
    session: Session,
    now: datetime,
    *,
    patient_id: int,
    category: Category,
    idempotency_key: str,
    channels: list[Channel] | None = None,
    context: dict[str, Any] | None = None,
    not_before: datetime | None = None,
    expires_at: datetime | None = None,
    enqueued_at: datetime | None = None,
    created_reason: str = "created",
) -> tuple[int, bool]:
    """Insert a PENDING row in the caller's transaction (plans commit atomically with what caused them).

    Returns ``(id, created)``; an existing idempotency key returns the existing row. ``created_reason`` is the
    creation event's reason (why it was made, when that is more than a trigger: e.g. an escalation).
    """
    existing = session.scalars(
        select(col(Notification.id)).where(col(Notification.idempotency_key) == idempotency_key)
    ).first()
    if existing is not None:
        return existing, False
    row = Notification(
        patient_id=patient_id,
        category=category,
        channels=[Channel(c).value for c in channels] if channels else None,
        context=context or {},
        idempotency_key=idempotency_key,
        state=State.PENDING,
        not_before=not_before,
        expires_at=expires_at,
        enqueued_at=enqueued_at,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    session.add(
        NotificationEvent(
            notification_id=id_of(row), from_state=None, to_state=State.PENDING, reason=created_reason[:500], at=now
        )
    )
    return id_of(row), True


def cancel_open(session: Session, now: datetime, *, patient_id: int, context_key: str, value: int, reason: str) -> int:
    """Cancel every not-yet-sent notification of a patient whose context[key] == value; returns how many."""
    rows = session.scalars(
        select(Notification).where(
            col(Notification.patient_id) == patient_id,
            col(Notification.state).in_([State.PENDING, State.DEFERRED, State.RETRYING]),
        )
    ).all()
    count = 0
    for row in rows:
        if row.context.get(context_key) == value:
            transition(session, row, State.CANCELLED, reason=reason, now=now)
            count += 1
    return count


def mark_enqueued(engine: Engine, notification_ids: Sequence[int], at: datetime) -> None:
    """Stamp rows just put on the broker, so the relay leaves them alone."""
    with session_scope(engine) as session:
        # Only if nobody stamped it since (a worker may already have scheduled its retry).
        session.execute(
            update(Notification)
            .where(col(Notification.id).in_(list(notification_ids)), col(Notification.enqueued_at).is_(None))
            .values(enqueued_at=at)
            .execution_options(synchronize_session=False)
        )


OPEN_STATES = (State.PENDING, State.DEFERRED, State.RETRYING)


def give_up(engine: Engine, clock: Clock, notification_id: int, *, retries: int) -> None:
    """The broker exhausted its retries on unexpected errors: settle the row as FAILED with the reason."""
    now = clock.now()
    with session_scope(engine) as session:
        row = session.get(Notification, notification_id)
        if row is None or State(row.state) in TERMINAL:
            return
        if State(row.state) is State.SENDING:
            row.lease_until = None
            row.claimed_by = None
        if can_transition(State(row.state), State.FAILED):
            transition(
                session,
                row,
                State.FAILED,
                reason=f"worker errors; broker gave up after {retries} retries",
                now=now,
            )
        else:  # PENDING/DEFERRED rows cannot fail directly: go through SENDING for the record
            transition(session, row, State.SENDING, reason="settling after broker gave up", now=now)
            transition(
                session,
                row,
                State.FAILED,
                reason=f"worker errors; broker gave up after {retries} retries",
                now=now,
            )
    log.warning("notification.gave_up", notification_id=notification_id, retries=retries)
