"""Outbound webhooks under load: N care-team notices, each one ``notification.sent`` event, to a local receiver
that verifies every signature with the ``standardwebhooks`` library (as the platform would), against the notices'
own delivery throughput in the same run.

Real processes on PostgreSQL and Redis: 2 `carenotify worker` processes (they consume the deliveries queue and the
webhooks queue), a `carenotify scheduler` (the relay, and the webhooks dispatcher every 0.5 s), the notices from a
producer process of their own (``bench.producer``), the provider sink and the webhook receiver in this process.

1. notices alone: N notices, no endpoint registered (the dispatcher runs and skips to the logs' ends).
2. notices + webhooks: an endpoint subscribed to ``notification.sent``, N more notices; events per second
   (N / (last event at the receiver - first trigger)) and the lag from the change to the receiver (the event's
   ``timestamp``, the moment the worker wrote ``sent``, to the receiver's clock on arrival: one machine, one
   clock), alongside the notices' own throughput in that phase. Here events can only come as fast as notices.
3. replay backlog: a new endpoint gets all 2N events at once (``replay``): the webhooks' own capacity.

    .venv/bin/python -m bench.webhooks --n 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench import cpu
from bench.harness import (
    REDIS,
    _processes,
    account,
    forget_namespace,
    percentile,
    provider_env,
    quiet_machine,
    scratch_database,
    wait_for,
)
from bench.producer import producer
from bench.sink import Sink
from worker.clock import SystemClock
from worker.db import make_engine
from worker.outbound.endpoints import add_endpoint

STALL_SECONDS = 60.0


class Receiver:
    """The platform's side: verify, record the first arrival of each webhook-id and its event's timestamp."""

    def __init__(self) -> None:
        self.secret = ""
        self.first: dict[str, float] = {}
        self.changed: dict[str, float] = {}
        self.requests = 0
        self.refused = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                now = time.time()
                try:
                    event = Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                    status = 204
                except WebhookVerificationError:
                    event, status = None, 400
                with receiver._lock:
                    receiver.requests += 1
                    if event is None:
                        receiver.refused += 1
                    else:
                        key = self.headers["webhook-id"]
                        if key not in receiver.first:
                            receiver.first[key] = now
                            stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                            receiver.changed[key] = stamp.timestamp()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def arrivals(self) -> dict[str, float]:  # what harness.wait_for counts
        return self.first

    def lags(self) -> list[float]:
        return sorted(self.first[k] - self.changed[k] for k in self.first)


@contextmanager
def service(pg_url: str, namespace: str, sink: Sink, *, threads: int, processes: int) -> Iterator[list[int]]:
    """Worker processes and one scheduler, on Redis and ``pg_url``, sending notices to ``sink``; yields the pids."""
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": pg_url,
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS,
        "CARENOTIFY_REDIS_NAMESPACE": namespace,
        **provider_env(sink),
        "CARENOTIFY_LOG_LEVEL": "WARNING",
    }
    worker = [sys.executable, "-m", "worker.cli", "worker", "--threads", str(threads)]
    scheduler = [sys.executable, "-m", "worker.cli", "scheduler"]
    with _processes([worker] * processes + [scheduler], env, namespace=namespace, consumers=processes) as procs:
        yield [p.pid for p in procs]


def phase(
    name: str, args: argparse.Namespace, pg_url: str, namespace: str, *, prefix: str, hooks: bool
) -> dict[str, float]:
    n = args.n
    with Sink() as sink, Receiver() as receiver:
        if hooks:
            engine = make_engine(pg_url)
            _, receiver.secret = add_endpoint(engine, SystemClock(), url=receiver.url, events="notification.sent")
            engine.dispose()
        with service(pg_url, namespace, sink, threads=args.threads, processes=args.processes) as pids:
            with producer("carenotify", n=n, namespace=namespace, db=pg_url, prefix=prefix, threads=4) as prod:
                before = cpu.Snapshot.take()
                prod.go()
                wait_for(sink, n, stall=STALL_SECONDS)
                notices_done = max(sink.arrivals.values(), default=float("nan"))
                if hooks:
                    wait_for(receiver, n, stall=STALL_SECONDS)  # type: ignore[arg-type]
                usage = cpu.Usage(before, cpu.Snapshot.take())
                produced = prod.result()
            workers = {"service": set(pids)}
    got = dict(sink.arrivals)
    notices = len([k for k in produced.triggers if k in got])
    notice_rate = notices / (notices_done - produced.started)
    out = {"notices": notices, "notice_rate": notice_rate}
    print(f"{name:>22}: notices {notices}/{n}, {notice_rate:7.1f}/s (trigger to sink)")
    if hooks:
        lags = receiver.lags()
        events = len(receiver.first)
        last = max(receiver.first.values(), default=float("nan"))
        event_rate = events / (last - produced.started)
        duplicates = receiver.requests - receiver.refused - events
        out |= {"events": events, "event_rate": event_rate, "p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99)}
        out |= {"max": lags[-1] if lags else float("nan"), "duplicates": duplicates, "refused": receiver.refused}
        print(
            f"{'':>24}webhooks: {events}/{n} events, {event_rate:7.1f}/s (first trigger to last event); lag change -> "
            f"receiver p50 {out['p50'] * 1000:,.0f} ms, p99 {out['p99'] * 1000:,.0f} ms, max {out['max'] * 1000:,.0f} "
            f"ms; {duplicates} duplicate requests, {receiver.refused} bad signatures"
        )
    for line in account(usage, n, pg_url=pg_url, workers=workers, producer=prod.pid, bench_label="sink+receiver").lines(
        " " * 24
    ):
        print(line)
    return out


def replay_phase(args: argparse.Namespace, pg_url: str, namespace: str, since: datetime) -> dict[str, float]:
    """Every event of the two phases again, to a new endpoint, at once (``replay``): the webhooks' own capacity,
    not limited by how fast notices happen."""
    from worker.outbound.dispatch import replay

    with Sink() as sink, Receiver() as receiver:
        engine = make_engine(pg_url)
        try:
            view, receiver.secret = add_endpoint(engine, SystemClock(), url=receiver.url, events="notification.sent")
            with service(pg_url, namespace, sink, threads=args.threads, processes=args.processes) as pids:
                before = cpu.Snapshot.take()
                started = time.time()
                queued = replay(engine, SystemClock(), since=since, endpoint_id=view.id)
                stored = time.time()
                wait_for(receiver, queued, stall=STALL_SECONDS)  # type: ignore[arg-type]
                usage = cpu.Usage(before, cpu.Snapshot.take())
        finally:
            engine.dispose()
    last = max(receiver.first.values(), default=float("nan"))
    rate = len(receiver.first) / (last - started)
    print(
        f"{'replay backlog':>22}: {len(receiver.first)}/{queued} events in {last - started:.1f} s = {rate:7.1f}/s "
        f"(replay queued them in {stored - started:.1f} s)"
    )
    for line in account(usage, queued, pg_url=pg_url, workers={"service": set(pids)}, bench_label="receiver").lines(
        " " * 24
    ):
        print(line)
    return {"events": len(receiver.first), "event_rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--wait-quiet", type=float, default=60.0)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-hooks-{uuid.uuid4().hex[:8]}"
    share = quiet_machine(timeout=args.wait_quiet)
    print(
        f"{args.processes} worker processes x {args.threads} threads + 1 scheduler; {os.cpu_count()} cores, "
        f"{share:.0%} busy before the run (other sessions' load)"
    )
    try:
        with scratch_database() as pg_url:
            since = datetime.now(UTC)
            alone = phase("notices alone", args, pg_url, f"{namespace}-a", prefix="alone-", hooks=False)
            both = phase("notices + webhooks", args, pg_url, f"{namespace}-b", prefix="hooks-", hooks=True)
            backlog = replay_phase(args, pg_url, f"{namespace}-c", since)
        print(
            "SUMMARY | "
            + json.dumps(
                {
                    "n": args.n,
                    "notices_alone_per_s": round(alone["notice_rate"], 1),
                    "notices_with_webhooks_per_s": round(both["notice_rate"], 1),
                    "webhook_events_per_s": round(both["event_rate"], 1),
                    "replayed_backlog_events_per_s": round(backlog["event_rate"], 1),
                    "lag_p50_ms": round(both["p50"] * 1000),
                    "lag_p99_ms": round(both["p99"] * 1000),
                    "duplicates": both["duplicates"],
                    "busy_before": round(share, 2),
                }
            )
        )
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
