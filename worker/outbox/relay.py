"""The outbox relay: queues every row that is due and has no live broker message.

It covers a crash between commit and enqueue, a scheduled or deferred row coming due, a broker that lost its
messages (a Redis restart: told by :class:`worker.broker.BrokerEpoch`, so recovery takes one tick, not
``requeue_after``), and a worker killed mid-send (its heartbeat stopped, so its lease ran out). Rows are picked
with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so several relays never queue the same row at once, stamped, and
committed *before* they are queued: a worker that gets the message at once finds the row unlocked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.models import Notification
from worker.outbox.notifications import OPEN_STATES
from worker.settings import OutboxSettings
from worker.states import State

log = structlog.get_logger(__name__)

#: Puts many notifications on the broker (in ``deliver_batch`` messages).
EnqueueMany = Callable[[Sequence[int]], None]


def _due_conditions(
    now: datetime, grace: timedelta, requeue_after: timedelta, *, orphans: bool = True
) -> list[ColumnElement[bool]]:
    """Index range scans (``ix_notification_due`` on state, not_before), so a tick costs what is due, not what
    exists: scheduled rows that came due, immediate rows nobody queued, and claims whose holder died."""
    stale = col(Notification.enqueued_at) <= now - requeue_after
    unqueued = or_(col(Notification.enqueued_at).is_(None), stale)
    scheduled = and_(col(Notification.state).in_(OPEN_STATES), col(Notification.not_before) <= now, unqueued)
    immediate = and_(
        col(Notification.state).in_(OPEN_STATES),
        col(Notification.not_before).is_(None),
        or_(and_(col(Notification.enqueued_at).is_(None), col(Notification.created_at) <= now - grace), stale),
    )
    conditions = [scheduled, immediate]
    if orphans:
        # Queued once per death: a relayed orphan is stamped after its lease ended; a new holder's lease ends later.
        conditions.append(
            and_(
                col(Notification.state) == State.SENDING,
                col(Notification.lease_until) < now,
                or_(
                    col(Notification.enqueued_at).is_(None),
                    col(Notification.enqueued_at) < col(Notification.lease_until),
                    stale,
                ),
            )
        )
    return conditions


def relay(
    engine: Engine,
    clock: Clock,
    enqueue_many: EnqueueMany,
    *,
    grace: timedelta,
    requeue_after: timedelta,
    batch_size: int,
    orphans: bool = True,
) -> int:
    """Queue up to ``batch_size`` due rows; returns how many."""
    now = clock.now()
    with session_scope(engine) as session:
        ids: list[int] = []
        for condition in _due_conditions(now, grace, requeue_after, orphans=orphans):
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
        if ids:
            session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )
    if not ids:
        return 0
    try:
        enqueue_many(ids)  # after the commit: the rows are unlocked when a worker gets them
    except Exception:
        # Not queued after all (the broker is away): unstamp, so the next tick tries again.
        with session_scope(engine) as session:
            session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids), col(Notification.enqueued_at) == now)
                .values(enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
        raise
    log.info("outbox.relayed", count=len(ids))
    return len(ids)


def forget_enqueued(engine: Engine) -> int:
    """The broker lost every message it held: mark every open row as unqueued, so the relay queues each again
    (immediate rows at once, retries when their time comes). Rows being sent are left to their holders."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Notification)
            .where(
                col(Notification.state).in_([State.PENDING, State.RETRYING]),
                col(Notification.enqueued_at).is_not(None),
            )
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


class Relay:
    """The scheduler's relay job, with what it must remember between ticks.

    After a tick fails on the database, orphan recovery waits one lease: every worker's heartbeat failed too
    while the database was away, so leases look expired although their holders are alive and about to beat.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        enqueue_many: EnqueueMany,
        settings: OutboxSettings,
        *,
        lease: timedelta,
        broker_lost: Callable[[], bool] | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._enqueue_many = enqueue_many
        self._settings = settings
        self._lease = lease
        self._broker_lost = broker_lost
        self._orphans_from: datetime | None = None

    def tick(self) -> int:
        cfg = self._settings
        try:
            if self._broker_lost is not None and self._broker_lost():
                forgotten = forget_enqueued(self._engine)
                if forgotten:
                    log.warning("outbox.broker_lost_messages", requeued=forgotten)
            total = 0
            orphans = self._orphans_from is None or self._clock.now() >= self._orphans_from
            while True:  # a backlog (after a broker loss) is queued in one tick, a batch at a time
                count = relay(
                    self._engine,
                    self._clock,
                    self._enqueue_many,
                    grace=timedelta(seconds=cfg.grace_seconds),
                    requeue_after=timedelta(seconds=cfg.requeue_after_seconds),
                    batch_size=cfg.batch_size,
                    orphans=orphans,
                )
                total += count
                if count < cfg.batch_size or total >= cfg.max_per_tick:
                    return total
        except DBAPIError:
            self._orphans_from = self._clock.now() + self._lease
            raise
