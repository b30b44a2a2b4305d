"""What the benchmarks share: a scratch PostgreSQL database, real `carenotify worker` processes and the bare
dramatiq baseline pointed at a loopback sink, and the wait for the sink to have seen everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import psycopg
import redis
from sqlalchemy.engine import make_url

from bench.sink import Sink
from worker.db import make_engine
from worker.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]
PG = os.environ.get("CARENOTIFY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("CARENOTIFY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, migrated PostgreSQL database for one measurement; dropped afterwards."""
    base = make_url(PG)
    name = f"carenotify_bench_{uuid.uuid4().hex[:8]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def forget_namespace(namespace: str) -> None:
    """Remove the Redis keys a run left under ``namespace``."""
    client = redis.Redis.from_url(REDIS)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)
    client.close()


@contextmanager
def _processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[None]:
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for cmd in commands
    ]
    try:
        time.sleep(3)  # let them boot
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)


@contextmanager
def carenotify_workers(
    pg_url: str, namespace: str, sink: Sink, *, threads: int, extra_env: dict[str, str] | None = None
) -> Iterator[None]:
    """Two `carenotify worker` processes on Redis and ``pg_url``, sending in-app notices to ``sink``."""
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
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "worker.cli", "worker", "--threads", str(threads)]
    with _processes([command, command], env):
        yield


@contextmanager
def bare_workers(namespace: str, sink: Sink, *, threads: int) -> Iterator[ModuleType]:
    """The baseline: ``bench.bare_actor`` in 2 dramatiq processes; yields the module to send its messages."""
    env = {**os.environ, "BENCH_REDIS_URL": REDIS, "BENCH_NAMESPACE": namespace, "BENCH_SINK_URL": sink.url}
    command = [sys.executable, "-m", "dramatiq", "bench.bare_actor", "--processes", "2", "--threads", str(threads)]
    os.environ.update(env)  # the module sets up its broker from these at import
    from bench import bare_actor

    with _processes([command], env):
        yield bare_actor


def wait_for(sink: Sink, n: int, timeout: float = 1800) -> None:
    """Until the sink has seen ``n`` distinct keys (or the timeout)."""
    deadline = time.monotonic() + timeout
    while len(sink.arrivals) < n and time.monotonic() < deadline:
        time.sleep(0.05)
