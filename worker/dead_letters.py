"""Dead letters: messages dramatiq gave up on (crashes beyond the retry cap). Listed and replayed by the
operator; a replay resets a FAILED notification to PENDING (written down as a transition) and queues it anew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy.engine import Engine

from worker.clock import Clock
from worker.db import session_scope
from worker.models import Notification
from worker.outbox import transition
from worker.states import State


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    actor_name: str
    notification_id: int | None
    retries: int
    dead_since: datetime | None


def _describe(message: dramatiq.Message[object], dead_since: datetime | None, *, store_id: str) -> DeadLetter:
    args = message.args or ()
    nid = args[0] if args and isinstance(args[0], int) else None
    if message.actor_name == "give_up" and args and isinstance(args[0], dict):
        inner = args[0].get("args") or []
        nid = inner[0] if inner and isinstance(inner[0], int) else None
    return DeadLetter(
        message_id=store_id,
        actor_name=message.actor_name,
        notification_id=nid,
        retries=int(message.options.get("retries", 0)),
        dead_since=dead_since,
    )


def list_dead_letters(broker: dramatiq.Broker, queue_name: str) -> list[DeadLetter]:
    """Oldest first."""
    if isinstance(broker, RedisBroker):
        key = f"{broker.namespace}:{queue_name}.XQ"
        out = []
        entries: list[tuple[bytes, float]] = broker.client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
        for raw_id, score in entries:
            data = broker.client.hget(f"{key}.msgs", raw_id)
            if not isinstance(data, bytes):
                continue
            # Redis keys a dead letter by the id of its last enqueue, not the logical message id.
            when = datetime.fromtimestamp(float(score) / 1000, UTC)
            out.append(_describe(dramatiq.Message.decode(data), when, store_id=raw_id.decode()))
        return out
    if isinstance(broker, StubBroker):
        return [
            _describe(proxy._message, None, store_id=proxy.message_id)  # noqa: SLF001
            for proxy in broker.dead_letters_by_queue[queue_name]
        ]
    return []


def replay_dead_letter(
    broker: dramatiq.Broker,
    engine: Engine,
    clock: Clock,
    enqueue: Callable[[int], None],
    *,
    queue_name: str,
    message_id: str,
) -> DeadLetter | None:
    """Remove one dead letter and queue its notification again; ``None`` if there is no such message."""
    letter = next((d for d in list_dead_letters(broker, queue_name) if d.message_id == message_id), None)
    if letter is None:
        return None
    if isinstance(broker, RedisBroker):
        key = f"{broker.namespace}:{queue_name}.XQ"
        broker.client.zrem(key, message_id)
        broker.client.hdel(f"{key}.msgs", message_id)
    elif isinstance(broker, StubBroker):
        letters = broker.dead_letters_by_queue[queue_name]
        letters[:] = [p for p in letters if p.message_id != message_id]
    if letter.notification_id is not None:
        with session_scope(engine) as session:
            row = session.get(Notification, letter.notification_id)
            if row is not None and State(row.state) is State.FAILED:
                transition(
                    session, row, State.PENDING, reason=f"replayed from dead letters ({message_id})", now=clock.now()
                )
                row.attempt_count = 0
                row.not_before = None
                row.enqueued_at = clock.now()
            elif row is None or State(row.state) in (
                State.SENT,
                State.DELIVERED,
                State.SUPPRESSED,
                State.CANCELLED,
                State.EXPIRED,
            ):
                return letter
        enqueue(letter.notification_id)
    return letter
