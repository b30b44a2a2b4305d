"""Terminal notifications are deleted ``retention.days`` after they settled, with their events and provider calls.

The walk follows the primary key from where the last batch stopped: ids grow with ``created_at``, and a row
that settled before the cutoff was created before it, so the walk stops (and starts over next time) at the first
row created after the cutoff. It reads at most one batch per transaction through the primary key and needs no
index on a time column (none is kept up to date on the delivery path for it); the children go through their
``notification_id`` indexes. Each batch is one short transaction: its rows are locked ``SKIP LOCKED`` with their
state and age checked again (a dead letter replayed meanwhile is left alone, and no worker ever waits on it),
the /metrics rollup takes back what it had counted for them, and the rows are deleted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from worker.metrics.rollup import forget_notifications, short_plans
from worker.models import DeliveryAttempt, Notification, NotificationEvent
from worker.states import TERMINAL

TERMINAL_STATES = sorted(state.value for state in TERMINAL)


@dataclass(frozen=True)
class Step:
    """One batch: rows deleted per table, the last id looked at, and whether the walk reached its end."""

    deleted: Counter[str]
    last_id: int
    finished: bool
    examined: int


def _old_and_settled(cutoff: datetime) -> list[Any]:
    return [col(Notification.state).in_(TERMINAL_STATES), col(Notification.finished_at) < cutoff]


def purge_step(engine: Engine, cutoff: datetime, *, after: int, batch_size: int) -> Step:
    """Delete the terminal notifications settled before ``cutoff`` among the next ``batch_size`` ids."""
    deleted: Counter[str] = Counter()
    with engine.begin() as conn:
        short_plans(conn)
        rows = conn.execute(
            select(col(Notification.id), col(Notification.created_at))
            .where(col(Notification.id) > after)
            .order_by(col(Notification.id))
            .limit(batch_size)
        ).all()
        if not rows:
            return Step(deleted, after, True, 0)
        last = int(rows[-1][0] or after)
        finished = len(rows) < batch_size or any(created >= cutoff for _, created in rows)
        ids = _lock(conn, after, last, cutoff)
        if ids:
            forget_notifications(conn, ids)
            deleted.update(_delete(conn, ids))
    return Step(deleted, last, finished, len(rows))


def _lock(conn: Connection, after: int, last: int, cutoff: datetime) -> list[int]:
    """The batch's rows that are terminal and old, locked for this transaction (a primary-key range, state and age
    checked under the lock); a row someone holds is skipped, and nobody ever waits for this one."""
    query = select(col(Notification.id)).where(
        col(Notification.id) > after, col(Notification.id) <= last, *_old_and_settled(cutoff)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [int(i) for i in conn.execute(query).scalars() if i is not None]


def _delete(conn: Connection, ids: list[int]) -> dict[str, int]:
    """Children first (counted per table), then the notifications."""
    counts = {}
    for table, statement in (
        ("delivery_attempt", delete(DeliveryAttempt).where(col(DeliveryAttempt.notification_id).in_(ids))),
        ("notification_event", delete(NotificationEvent).where(col(NotificationEvent.notification_id).in_(ids))),
        ("notification", delete(Notification).where(col(Notification.id).in_(ids))),
    ):
        counts[table] = int(conn.execute(statement).rowcount)
    return counts


def due_counts(engine: Engine, cutoff: datetime) -> dict[str, int]:
    """What a full purge would delete now, per table (``carenotify db purge --dry-run``)."""
    old = select(col(Notification.id)).where(*_old_and_settled(cutoff))
    with engine.connect() as conn:
        notifications = conn.scalar(select(func.count()).select_from(old.subquery()))
        events = conn.scalar(
            select(func.count()).where(col(NotificationEvent.notification_id).in_(old)).select_from(NotificationEvent)
        )
        attempts = conn.scalar(
            select(func.count()).where(col(DeliveryAttempt.notification_id).in_(old)).select_from(DeliveryAttempt)
        )
    return {
        "notification": int(notifications or 0),
        "notification_event": int(events or 0),
        "delivery_attempt": int(attempts or 0),
    }
