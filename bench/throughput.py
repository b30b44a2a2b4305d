"""Throughput and trigger-to-sink latency: N care-team messages through the full path (PostgreSQL outbox, Redis
broker, 2 `carenotify worker` processes, send-time policy, the in-app HTTP adapter) to a local sink, against a bare
dramatiq actor (2 processes, same threads) that only POSTs to the same sink. Same machine, same run.

    .venv/bin/python -m bench.throughput [--n 2000] [--threads 4]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid

import structlog

from bench.harness import REDIS, bare_workers, carenotify_workers, forget_namespace, scratch_database, wait_for
from bench.sink import Sink
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.patients import upsert_patient
from worker.settings import load_settings


def _report(name: str, sink: Sink, triggers: dict[str, float], started: float) -> float:
    latencies = sorted(sink.arrivals[k] - t for k, t in triggers.items() if k in sink.arrivals)
    elapsed = max(sink.arrivals.values()) - started
    rate = len(latencies) / elapsed
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{name:>9}: {len(latencies)} msgs in {elapsed:.2f} s = {rate:7.1f} msg/s; "
        f"latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    return rate


def full_path(n: int, threads: int, pg_url: str, namespace: str) -> float:
    with Sink() as sink, carenotify_workers(pg_url, namespace, sink, threads=threads):
        settings = load_settings(
            database_url=pg_url,
            broker="redis",
            redis_url=REDIS,
            redis_namespace=namespace,
            providers={"inapp": ["console"]},
            log_level="WARNING",
        )
        app = build_app(settings, clock=SystemClock())
        try:
            pid = upsert_patient(app.engine, app.clock, external_ref="bench", time_zone="UTC")
            triggers: dict[str, float] = {}
            started = time.time()
            for i in range(n):
                key = f"bench-{i}"
                triggers[f"{key}:inapp"] = time.time()
                app.submit(
                    patient_id=pid, category=Category.CARE_TEAM_MESSAGE, channels=[Channel.INAPP], idempotency_key=key
                )
            wait_for(sink, n, timeout=600)
            return _report("carenotify", sink, triggers, started)
        finally:
            app.close()


def bare(n: int, threads: int, namespace: str) -> float:
    with Sink() as sink, bare_workers(namespace, sink, threads=threads) as bare_actor:
        triggers: dict[str, float] = {}
        started = time.time()
        for i in range(n):
            triggers[f"bare-{i}"] = time.time()
            bare_actor.post.send(f"bare-{i}")
        wait_for(sink, n, timeout=600)
        return _report("baseline", sink, triggers, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        with scratch_database() as pg_url:
            baseline = bare(args.n, args.threads, namespace + "-bare")
            ours = full_path(args.n, args.threads, pg_url, namespace)
            print(f"ratio carenotify / bare actor throughput = {ours / baseline:.2f}")
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
