"""Creating notifications (the outbox), moving them through the state machine, and the outbox relay."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from worker.categories import Category, Channel
from worker.clock import Clock
from worker.db import session_scope
from worker.errors import IllegalTransition, InvalidInput, NotFound
from worker.models import Notification, NotificationEvent, Patient
from worker.states import CLAIMABLE, TERMINAL, State, can_transition

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
) -> Submitted:
    """Commit a notification row, then enqueue it (outbox order: nothing is sent that is not stored).

    The same idempotency key returns the existing notification instead of a second one. A row whose
    ``not_before`` lies ahead is not enqueued now: the relay queues it when it becomes due.
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

    with session_scope(engine) as session:
        if session.get(Patient, patient_id) is None:
            raise NotFound(f"patient {patient_id} does not exist")
        try:
            with session.begin_nested():
                notification_id, created = add_notification(
                    session,
                    now,
                    patient_id=patient_id,
                    category=category,
                    idempotency_key=idempotency_key,
                    channels=channels,
                    context=context,
                    not_before=not_before,
                    expires_at=expires_at,
                )
        except IntegrityError:
            # Lost a race with the same key: the other writer's row stands.
            other = session.scalars(
                select(col(Notification.id)).where(col(Notification.idempotency_key) == idempotency_key)
            ).one()
            assert other is not None
            return Submitted(notification_id=other, created=False)
    if not created:
        return Submitted(notification_id=notification_id, created=False)

    if not_before is None or not_before <= now:
        enqueue(notification_id)
        mark_enqueued(engine, [notification_id], clock.now())
    log.info("notification.created", notification_id=notification_id, category=str(category))
    return Submitted(notification_id=notification_id, created=True)


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
) -> tuple[int, bool]:
    """Insert a PENDING row in the caller's transaction (plans commit atomically with what caused them).

    Returns ``(id, created)``; an existing idempotency key returns the existing row.
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
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    session.add(
        NotificationEvent(notification_id=id_of(row), from_state=None, to_state=State.PENDING, reason="created", at=now)
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


def claim(engine: Engine, clock: Clock, notification_id: int, *, lease: timedelta) -> Notification | None:
    """Compare-and-set the row to SENDING; ``None`` if another worker has it or it is not due/claimable.

    A SENDING row whose lease ran out (its worker died mid-send) may be claimed again.
    """
    now = clock.now()
    with session_scope(engine) as session:
        row = session.get(Notification, notification_id)
        if row is None:
            return None
        observed = State(row.state)
        claimable, stale_lease = _claimable(row, now)
        if not claimable:
            return None
        result = session.execute(
            update(Notification)
            .where(
                col(Notification.id) == notification_id,
                col(Notification.state) == observed,
                col(Notification.updated_at) == row.updated_at,
            )
            .values(
                state=State.SENDING,
                lease_until=now + lease,
                attempt_count=col(Notification.attempt_count) + 1,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        reason = "lease expired; claimed again" if stale_lease else "claimed"
        session.add(
            NotificationEvent(
                notification_id=notification_id,
                from_state=observed,
                to_state=State.SENDING,
                reason=reason,
                at=now,
            )
        )
        session.refresh(row)
        session.expunge(row)
        return row


def _claimable(row: Notification, now: datetime) -> tuple[bool, bool]:
    """(may be claimed now, because its lease ran out): due and claimable, or SENDING by a worker that died."""
    observed = State(row.state)
    due = row.not_before is None or row.not_before <= now
    stale_lease = observed is State.SENDING and row.lease_until is not None and row.lease_until < now
    return (observed in CLAIMABLE and due) or stale_lease, stale_lease


def claim_many(
    engine: Engine, clock: Clock, notification_ids: Sequence[int], *, lease: timedelta
) -> list[Notification]:
    """Claim every claimable row of a batch in one transaction; the others are left alone.

    The rows are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock is taken at BEGIN), so a
    concurrent :func:`claim` of the same row fails its compare-and-set and a concurrent batch skips it.
    """
    now = clock.now()
    with session_scope(engine) as session:
        query = select(Notification).where(col(Notification.id).in_(list(notification_ids)))
        if engine.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        claimed: list[Notification] = []
        for row in session.scalars(query.order_by(col(Notification.id))):
            claimable, stale_lease = _claimable(row, now)
            if not claimable:
                continue
            session.add(
                NotificationEvent(
                    notification_id=id_of(row),
                    from_state=row.state,
                    to_state=State.SENDING,
                    reason="lease expired; claimed again" if stale_lease else "claimed",
                    at=now,
                )
            )
            row.state = State.SENDING
            row.lease_until = now + lease
            row.attempt_count += 1
            row.updated_at = now
            claimed.append(row)
        session.flush()
        for row in claimed:
            session.expunge(row)
    return claimed


OPEN_STATES = (State.PENDING, State.DEFERRED, State.RETRYING)


def _due_conditions(now: datetime, grace: timedelta, requeue_after: timedelta) -> list[ColumnElement[bool]]:
    """Three index range scans (``ix_notification_due`` on state, not_before), so a tick costs what is due,
    not what exists: scheduled rows that came due, immediate rows nobody queued, and orphaned claims."""
    unqueued = or_(col(Notification.enqueued_at).is_(None), col(Notification.enqueued_at) <= now - requeue_after)
    scheduled = and_(col(Notification.state).in_(OPEN_STATES), col(Notification.not_before) <= now, unqueued)
    immediate = and_(
        col(Notification.state).in_(OPEN_STATES),
        col(Notification.not_before).is_(None),
        or_(
            and_(col(Notification.enqueued_at).is_(None), col(Notification.created_at) <= now - grace),
            col(Notification.enqueued_at) <= now - requeue_after,
        ),
    )
    orphaned = and_(col(Notification.state) == State.SENDING, col(Notification.lease_until) < now)
    return [scheduled, immediate, orphaned]


def relay(
    engine: Engine,
    clock: Clock,
    enqueue: Enqueue,
    *,
    grace: timedelta,
    requeue_after: timedelta,
    batch_size: int,
    enqueue_many: Callable[[Sequence[int]], None] | None = None,
) -> int:
    """Enqueue every row that is due but has no live broker message; returns how many.

    Covers: a crash between commit and enqueue; a scheduled or deferred row becoming due; a broker that lost
    its message (e.g. a Redis restart); a worker killed mid-send (lease ran out). Rows are locked with
    ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several relays never queue the same row twice at once;
    a duplicate message is harmless anyway because the worker's claim is a compare-and-set.
    """
    now = clock.now()
    with session_scope(engine) as session:
        ids: list[int] = []
        for condition in _due_conditions(now, grace, requeue_after):
            query = (
                select(col(Notification.id))
                .where(condition)
                .order_by(col(Notification.id))
                .limit(batch_size - len(ids))
            )
            if engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids.extend(session.scalars(query))
            if len(ids) >= batch_size:
                break
        if enqueue_many is not None:
            enqueue_many(ids)  # in batches: 10,000 reminders due at 08:00 are not 10,000 broker messages
        else:
            for notification_id in ids:
                enqueue(notification_id)
        if ids:
            session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
    if ids:
        log.info("outbox.relayed", count=len(ids))
    return len(ids)


def give_up(engine: Engine, clock: Clock, notification_id: int, *, retries: int) -> None:
    """The broker exhausted its retries on unexpected errors: settle the row as FAILED with the reason."""
    now = clock.now()
    with session_scope(engine) as session:
        row = session.get(Notification, notification_id)
        if row is None or State(row.state) in TERMINAL:
            return
        if State(row.state) is State.SENDING:
            row.lease_until = None
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
