"""The baseline for bench/throughput.py: a bare dramatiq actor that only POSTs to the sink (no database, no
policy, no outbox). Run by the dramatiq CLI, so its broker is set up at import, as dramatiq expects."""

from __future__ import annotations

import os

import dramatiq
import httpx
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace=os.environ["BENCH_NAMESPACE"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
client = httpx.Client(timeout=10)


@dramatiq.actor(queue_name="bare", max_retries=3)
def post(key: str) -> None:
    client.post(os.environ["BENCH_SINK_URL"], json={"idempotency_key": key}).raise_for_status()


@dramatiq.actor(queue_name="bare", max_retries=3)
def post_batch(keys: list[str]) -> None:
    """The fan-out baseline: a chunk of recipients per message, one POST each (as ``deliver_batch`` does)."""
    for key in keys:
        client.post(os.environ["BENCH_SINK_URL"], json={"idempotency_key": key}).raise_for_status()
