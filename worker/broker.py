"""The broker: dramatiq on Redis in production, an in-process broker for the embedded default.

Same actors, same middleware, same code path in both; only the transport differs.
"""

from __future__ import annotations

import uuid

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from worker.settings import Settings

#: dramatiq's maintenance chance is counted per million broker commands.
_PER_MILLION = 1_000_000


def build_broker(settings: Settings, *, namespace: str = "carenotify") -> dramatiq.Broker:
    """Create (but do not connect) the broker named by ``settings.broker``.

    On Redis, a worker that stops heartbeating for ``broker_heartbeat_timeout_seconds`` is dead, and the next
    maintenance pass (run by ``broker_maintenance_chance`` of the commands every live process sends while it
    polls) puts the messages it had fetched but not acknowledged back on the queue: seconds, not minutes.
    """
    broker: dramatiq.Broker
    if settings.broker == "redis":
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=settings.redis_url,
            namespace=namespace,
            heartbeat_timeout=int(settings.broker_heartbeat_timeout_seconds * 1000),
            maintenance_chance=int(settings.broker_maintenance_chance * _PER_MILLION),
        )
    else:
        broker = StubBroker()
    return broker


class BrokerEpoch:
    """Tells the relay when the broker lost what it held, so it queues those rows again at once.

    Redis without persistence forgets every message on a restart (a flush does the same). A small marker key
    lives beside the queues: when it is gone, so are they. The relay that re-creates it (``SET NX``: exactly
    one of several schedulers) requeues; the others see the new marker and do nothing. The in-process broker
    loses its queue with the process, so the first check after a start reports a loss.
    """

    def __init__(self, broker: dramatiq.Broker, *, namespace: str) -> None:
        self._client: redis.Redis | None = broker.client if isinstance(broker, RedisBroker) else None
        self._key = f"{namespace}:broker-epoch"
        self._started = False

    def lost(self) -> bool:
        """True once per loss: the queued messages of before are gone."""
        if self._client is None:
            first, self._started = not self._started, True
            return first
        return bool(self._client.set(self._key, uuid.uuid4().hex, nx=True))

    def current(self) -> str | None:
        """The marker as it is now (``None``: gone, so the queues may be too), for writers that vouch for a
        message being queued (:mod:`worker.outbox.stamps`); ``None`` for a broker without one."""
        if self._client is None:
            return None
        value = self._client.get(self._key)
        return value.decode() if isinstance(value, bytes) else value


def queue_depths(broker: dramatiq.Broker) -> dict[str, int]:
    """Messages waiting per queue (ready + delayed), for /metrics and the operator CLI."""
    depths: dict[str, int] = {}
    if isinstance(broker, RedisBroker):
        client = broker.client
        for queue in broker.get_declared_queues():
            depths[queue] = int(client.llen(f"{broker.namespace}:{queue}"))
            depths[f"{queue}.DQ"] = int(client.llen(f"{broker.namespace}:{queue}.DQ"))
    elif isinstance(broker, StubBroker):
        for queue, q in broker.queues.items():
            depths[queue] = q.qsize()
    return depths
