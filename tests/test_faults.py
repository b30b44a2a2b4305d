"""Fault injection with real processes on loopback: kill -9 a worker mid-run, restart Redis mid-run, a provider
answering 503/429 for a while. Each ends with every notification terminal, none lost, and duplicates no more
than the sends that were in flight at the fault (reported in the output)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import col

from bench.sink import Sink
from tests.conftest import REDIS_URL, make_settings
from worker.bootstrap import build_app
from worker.categories import Category, Channel
from worker.clock import SystemClock
from worker.db import session_scope
from worker.models import Notification
from worker.patients import upsert_patient
from worker.states import TERMINAL, State

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
THREADS = 4


def _env(pg_url: str, redis_url: str, namespace: str, sink: Sink) -> dict[str, str]:
    return {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": pg_url,
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": redis_url,
        "CARENOTIFY_REDIS_NAMESPACE": namespace,
        "CARENOTIFY_PROVIDERS": '{"inapp": ["inapp"], "push": ["console"], "sms": ["console"], "email": ["console"]}',
        "CARENOTIFY_PROVIDER__INAPP_URL": sink.url,
        "CARENOTIFY_PROVIDER__RATE_LIMITS_PER_SECOND": '{"inapp": 0}',
        "CARENOTIFY_INAPP_API_TOKEN": "fault-test",
        "CARENOTIFY_CONSOLE_SINK": os.devnull,
        "CARENOTIFY_DELIVERY__MIN_BACKOFF_SECONDS": "0.2",
        "CARENOTIFY_DELIVERY__MAX_BACKOFF_SECONDS": "1",
        "CARENOTIFY_DELIVERY__MAX_ATTEMPTS": "30",
        "CARENOTIFY_DELIVERY__CLAIM_LEASE_SECONDS": "10",
        "CARENOTIFY_OUTBOX__RELAY_INTERVAL_SECONDS": "0.5",
        "CARENOTIFY_OUTBOX__GRACE_SECONDS": "1",
        "CARENOTIFY_OUTBOX__REQUEUE_AFTER_SECONDS": "4",
        "CARENOTIFY_PROVIDER__BREAKER_COOLDOWN_SECONDS": "1",
    }


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _submit(pg_url: str, redis_url: str, namespace: str, sink: Sink, count: int) -> list[int]:
    settings = make_settings(
        database_url=pg_url,
        broker="redis",
        redis_url=redis_url,
        redis_namespace=namespace,
        providers={"inapp": ["console"]},
    )
    app = build_app(settings, clock=SystemClock())
    try:
        pid = upsert_patient(app.engine, app.clock, external_ref="fault-pt", time_zone="UTC")
        return [
            app.submit(
                patient_id=pid,
                category=Category.CARE_TEAM_MESSAGE,
                channels=[Channel.INAPP],
                idempotency_key=f"fault-{datetime.now(UTC).timestamp()}-{i}",
            ).notification_id
            for i in range(count)
        ]
    finally:
        app.close()


def _wait_terminal(pg_url: str, ids: list[int], timeout: float) -> dict[str, int]:
    settings = make_settings(database_url=pg_url)
    app = build_app(settings, providers={})
    deadline = time.monotonic() + timeout
    try:
        while True:
            with session_scope(app.engine) as session:
                rows = session.execute(
                    select(col(Notification.state), func.count())
                    .where(col(Notification.id).in_(ids))
                    .group_by(col(Notification.state))
                ).all()
            states = {str(s): int(n) for s, n in rows}
            if sum(n for s, n in states.items() if State(s) in TERMINAL) == len(ids) or time.monotonic() > deadline:
                return states
            time.sleep(0.25)
    finally:
        app.close()


def test_kill_9_a_worker_mid_run(pg_url: str, redis_namespace: str) -> None:
    with Sink(delay=0.02) as sink:
        env = _env(pg_url, REDIS_URL, redis_namespace, sink)
        ids = _submit(pg_url, REDIS_URL, redis_namespace, sink, 300)
        scheduler = _spawn(["scheduler"], env)
        victim = _spawn(["worker", "--threads", str(THREADS)], env)
        survivor = _spawn(["worker", "--threads", str(THREADS)], env)
        try:
            deadline = time.monotonic() + 30
            while sum(sink.received.values()) < 60 and time.monotonic() < deadline:
                time.sleep(0.02)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            states = _wait_terminal(pg_url, ids, timeout=45)
        finally:
            _stop(survivor, scheduler)
    duplicates = sum(n - 1 for n in sink.received.values() if n > 1)
    print(f"\nkill -9: {len(ids)} notifications, states {states}, duplicates {duplicates} (in-flight bound {THREADS})")
    assert states == {"sent": 300}
    assert len(sink.received) == 300, "none lost"
    assert duplicates <= THREADS, "at most the sends in flight at the kill"


def test_provider_503_then_429_for_a_while(pg_url: str, redis_namespace: str) -> None:
    with Sink() as sink:
        env = _env(pg_url, REDIS_URL, redis_namespace, sink)
        sink.fail_plan = [503] * 20 + [429] * 10  # the first 30 calls are refused, whoever makes them
        ids = _submit(pg_url, REDIS_URL, redis_namespace, sink, 100)
        scheduler = _spawn(["scheduler"], env)
        workers = [_spawn(["worker", "--threads", str(THREADS)], env) for _ in range(2)]
        try:
            states = _wait_terminal(pg_url, ids, timeout=45)
        finally:
            _stop(*workers, scheduler)
    print(f"\n503/429 storm: refused {sink.refused} calls, states {states}")
    if states != {"sent": 100}:
        _print_reasons(pg_url)
    assert states == {"sent": 100}
    assert sink.refused == 30 and len(sink.received) == 100 and set(sink.received.values()) == {1}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _private_redis(port: int, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_restart_mid_run_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    """Redis here keeps nothing on disk: a restart drops every queued message. The outbox relay re-queues them."""
    port = _free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"
    with Sink(delay=0.02) as sink:
        env = _env(pg_url, redis_url, "fault", sink)
        with _private_redis(port, tmp_path):
            ids = _submit(pg_url, redis_url, "fault", sink, 200)
            scheduler = _spawn(["scheduler"], env)
            workers = [_spawn(["worker", "--threads", str(THREADS)], env) for _ in range(2)]
            deadline = time.monotonic() + 30
            while sum(sink.received.values()) < 40 and time.monotonic() < deadline:
                time.sleep(0.02)
        received_before = sum(sink.received.values())
        try:
            time.sleep(1.0)  # Redis is down: workers and scheduler keep retrying their connections
            with _private_redis(port, tmp_path):
                states = _wait_terminal(pg_url, ids, timeout=60)
        finally:
            _stop(*workers, scheduler)
    duplicates = sum(n - 1 for n in sink.received.values() if n > 1)
    print(f"\nredis restart: {received_before} sent before, states {states}, duplicates {duplicates}")
    assert received_before < 200, "the restart happened mid-run"
    assert states == {"sent": 200}
    assert len(sink.received) == 200, "none lost, although Redis forgot every queued message"
    assert duplicates <= 2 * THREADS


def _print_reasons(pg_url: str) -> None:
    app = build_app(make_settings(database_url=pg_url), providers={})
    with session_scope(app.engine) as session:
        for reason, n in session.execute(
            select(col(Notification.reason), func.count()).group_by(col(Notification.reason))
        ).all():
            print(n, reason)
    app.close()
