"""Throughput and trigger-to-sink latency: N care-team messages through the full path (PostgreSQL outbox, Redis
broker, 2 `carenotify worker` processes, send-time policy, the in-app HTTP adapter) to a local sink, against a bare
dramatiq actor (2 processes, same threads) that only POSTs to the same sink. Same machine, same run.

    .venv/bin/python bench/throughput.py [--n 2000] [--threads 4]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import redis
import structlog
from sqlalchemy.engine import make_url

from bench.sink import Sink
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.migrate import upgrade
from worker.patients import upsert_patient
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("CARENOTIFY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("CARENOTIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


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


def _wait(sink: Sink, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.arrivals) < n and time.monotonic() < deadline:
        time.sleep(0.05)


def full_path(n: int, threads: int, pg_url: str, namespace: str) -> float:
    with Sink() as sink:
        env = {
            **os.environ,
            "CARENOTIFY_DATABASE_URL": pg_url,
            "CARENOTIFY_BROKER": "redis",
            "CARENOTIFY_REDIS_URL": REDIS,
            "CARENOTIFY_REDIS_NAMESPACE": namespace,
            "CARENOTIFY_PROVIDERS": '{"inapp": ["inapp"]}',
            "CARENOTIFY_PROVIDER__INAPP_URL": sink.url,
            "CARENOTIFY_PROVIDER__RATE_LIMITS_PER_SECOND": '{"inapp": 0}',
            "CARENOTIFY_INAPP_API_TOKEN": "bench",
            "CARENOTIFY_LOG_LEVEL": "WARNING",
        }
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "worker", "--threads", str(threads)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
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
            time.sleep(3)  # let the workers boot
            triggers: dict[str, float] = {}
            started = time.time()
            for i in range(n):
                key = f"bench-{i}"
                triggers[f"{key}:inapp"] = time.time()
                app.submit(
                    patient_id=pid, category=Category.CARE_TEAM_MESSAGE, channels=[Channel.INAPP], idempotency_key=key
                )
            _wait(sink, n)
            return _report("carenotify", sink, triggers, started)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                w.wait(timeout=30)
            app.close()


def bare(n: int, threads: int, namespace: str) -> float:
    with Sink() as sink:
        env = {**os.environ, "BENCH_REDIS_URL": REDIS, "BENCH_NAMESPACE": namespace, "BENCH_SINK_URL": sink.url}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "bench.bare_actor", "--processes", "2", "--threads", str(threads)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.environ.update(env)
        from bench import bare_actor

        try:
            time.sleep(3)
            triggers: dict[str, float] = {}
            started = time.time()
            for i in range(n):
                triggers[f"bare-{i}"] = time.time()
                bare_actor.post.send(f"bare-{i}")
            _wait(sink, n)
            return _report("baseline", sink, triggers, started)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    base = make_url(PG)
    name = f"carenotify_bench_{uuid.uuid4().hex[:8]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    pg_url = base.set(database=name).render_as_string(hide_password=False)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        from worker.db import make_engine

        engine = make_engine(pg_url)
        upgrade(engine)
        engine.dispose()
        baseline = bare(args.n, args.threads, namespace + "-bare")
        ours = full_path(args.n, args.threads, pg_url, namespace)
        print(f"ratio carenotify / bare actor throughput = {ours / baseline:.2f}")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(f"{namespace}*"):
            client.delete(key)


if __name__ == "__main__":
    main()
