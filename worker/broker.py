"""The broker: dramatiq on Redis in production, an in-process broker for the embedded default.

Same actors, same middleware, same code path in both; only the transport differs.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from worker.settings import Settings


def build_broker(settings: Settings, *, namespace: str = "carenotify") -> dramatiq.Broker:
    """Create (but do not connect) the broker named by ``settings.broker``."""
    broker: dramatiq.Broker
    if settings.broker == "redis":
        broker = RedisBroker(url=settings.redis_url, namespace=namespace)  # type: ignore[no-untyped-call]
    else:
        broker = StubBroker()
    return broker


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
