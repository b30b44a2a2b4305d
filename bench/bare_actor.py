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


def sendgrid_single(key: str) -> dict[str, object]:
    """One marketing email in SendGrid's single-send shape (what ``SendGridEmailProvider.send`` posts): one
    personalization, her unsubscribe headers and ``custom_args.notification_id`` (= ``key``, which the sink counts)
    at the top level."""
    url = f"https://notify.example/v1/unsubscribe/bench{key}"
    return {
        "personalizations": [{"to": [{"email": f"bench{key}@example.org"}]}],
        "from": {"email": "care@partum.example", "name": "Partum Health"},
        "subject": "Join a free class",
        "content": [{"type": "text/plain", "value": f"New group classes are open for sign-up in the app.\n\n{url}"}],
        "custom_args": {"notification_id": key},
        "categories": ["marketing"],
        "headers": {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "asm": {"group_id": 1},
    }


@dramatiq.actor(queue_name="bare", max_retries=3)
def post_emails(keys: list[str]) -> None:
    """The email baseline: a chunk of recipients per message, one SendGrid single send each (the sink's
    ``/v3/mail/send``, answered 202), as a bare actor would without personalizations."""
    url = str(httpx.URL(os.environ["BENCH_SINK_URL"]).copy_with(path="/v3/mail/send"))
    for key in keys:
        client.post(url, json=sendgrid_single(key), headers={"authorization": "Bearer bench"}).raise_for_status()


def main() -> None:
    """Run these actors in this process as `carenotify worker` runs its own (``worker.runtime.start_worker``): one
    ``dramatiq.Worker`` with ``--threads`` threads and a 250 ms idle poll cap (``worker_timeout``; the dramatiq
    CLI's is 1,000 ms, which alone makes an idle-ish baseline late), until SIGTERM or SIGINT.

        BENCH_REDIS_URL=... BENCH_NAMESPACE=... BENCH_SINK_URL=... python -m bench.bare_actor --threads 4
    """
    import argparse
    import signal
    import threading

    parser = argparse.ArgumentParser(description="the bare baseline's worker process")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--worker-timeout", type=int, default=250, help="idle poll cap, ms")
    args = parser.parse_args()
    broker.emit_after("process_boot")
    worker = dramatiq.Worker(broker, worker_threads=args.threads, worker_timeout=args.worker_timeout)
    worker.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    worker.stop(timeout=30_000)
    broker.close()


if __name__ == "__main__":
    main()
