"""The production stack: real PostgreSQL and Redis, real dramatiq workers, real process kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import (
    REDIS_URL,
    attempts,
    create_notification,
    create_patient,
    fake_providers,
    load,
    make_settings,
)
from worker.categories import Channel
from worker.db import session_scope
from worker.delivery.claims import claim
from worker.models import DeliveryAttempt, Notification
from worker.outbox import relay
from worker.runtime import start_worker, stop_worker
from worker.states import TERMINAL, State

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[1]


def _wait_all_terminal(app, ids: list[int], timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(app.engine) as session:
            states = session.scalars(select(Notification.state).where(Notification.id.in_(ids))).all()  # type: ignore[union-attr]
        if len(states) == len(ids) and all(State(s) in TERMINAL for s in states):
            return
        time.sleep(0.05)
    raise AssertionError(f"not all terminal after {timeout}s: {states}")


@pytest.fixture
def prod_app(make_app, pg_url: str, redis_namespace: str):  # type: ignore[no-untyped-def]
    def factory(**kw):  # type: ignore[no-untyped-def]
        return make_app(
            database_url=pg_url,
            broker="redis",
            redis_url=REDIS_URL,
            broker_namespace=redis_namespace,
            migrate=False,
            **kw,
        )

    return factory


def test_notifications_flow_through_redis_and_postgres_exactly_once(prod_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = prod_app(providers=fake_providers(push=push), worker_threads=4)
    assert isinstance(app.broker, RedisBroker)
    ids = [create_notification(app, create_patient(app)) for _ in range(40)]
    worker = start_worker(app, threads=4)
    try:
        _wait_all_terminal(app, ids)
    finally:
        stop_worker(app, worker)
    assert {load(app, i).state for i in ids} == {State.SENT}
    assert sorted(m.notification_id for m in push.sent) == ids
    with session_scope(app.engine) as session:
        assert session.scalar(select(func.count()).select_from(DeliveryAttempt)) == 40


def test_duplicate_messages_for_one_row_send_once(prod_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = prod_app(providers=fake_providers(push=push))
    nid = create_notification(app, create_patient(app))
    for _ in range(5):  # e.g. two relays and a redelivery after a worker restart
        app.enqueue(nid)
    worker = start_worker(app, threads=4)
    try:
        _wait_all_terminal(app, [nid])
        app.broker.join(app.settings.queue_name, timeout=10_000)  # type: ignore[attr-defined]
    finally:
        stop_worker(app, worker)
    assert len(push.sent) == 1 and len(attempts(app, nid)) == 1


def test_concurrent_claims_on_postgres_have_one_winner(prod_app) -> None:  # type: ignore[no-untyped-def]
    app = prod_app()
    nid = create_notification(app, create_patient(app))
    barrier = threading.Barrier(6)
    won: list[bool] = []

    def contender() -> None:
        barrier.wait()
        won.append(claim(app.engine, app.clock, nid, lease=timedelta(minutes=5), holder="test-worker") is not None)

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1


def test_two_relays_at_once_queue_each_row_once(prod_app) -> None:  # type: ignore[no-untyped-def]
    app = prod_app()
    pid = create_patient(app)
    from worker.outbox import submit

    def crash(_: int) -> None:
        raise RuntimeError("crash before enqueue")

    for i in range(30):
        with pytest.raises(RuntimeError):
            submit(
                app.engine,
                app.clock,
                crash,
                patient_id=pid,
                category="care_team_message",
                idempotency_key=f"k{i}",
            )
    app.clock.advance(minutes=1)
    queued: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def one_relay() -> None:
        def enqueue(ids: Sequence[int]) -> None:
            with lock:
                queued.extend(ids)
            time.sleep(0.005)  # hold the row locks a little so the two relays overlap

        barrier.wait()
        relay(
            app.engine,
            app.clock,
            enqueue,
            grace=timedelta(seconds=10),
            requeue_after=timedelta(minutes=15),
            batch_size=500,
        )

    threads = [threading.Thread(target=one_relay) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(queued) == list(range(1, 31))


def test_kill_between_commit_and_enqueue_then_relay_delivers_exactly_once(
    prod_app, pg_url: str, redis_namespace: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": pg_url,
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS_URL,
        "TEST_BROKER_NAMESPACE": redis_namespace,
    }
    child = subprocess.run(
        [sys.executable, "-m", "tests.integration_child", "kill-after-commit", "pt-kill", "kill-key"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    email = ScriptedProvider(name="email", channel=Channel.EMAIL)
    app = prod_app(providers=fake_providers(email=email))
    app.clock.set(datetime.now(UTC))  # the child ran on the wall clock
    row = load(app, 1)
    assert row.state == State.PENDING and row.enqueued_at is None, "the row survived the crash, unqueued"
    assert app.broker.client.llen(f"{redis_namespace}:{app.settings.queue_name}") == 0  # type: ignore[attr-defined]

    worker = start_worker(app, threads=2)
    try:
        app.clock.advance(seconds=app.settings.outbox.grace_seconds + 1)
        assert app.relay() == 1
        _wait_all_terminal(app, [1])
        # Later relay ticks find nothing more to do.
        app.clock.advance(minutes=30)
        assert app.relay() == 0
        app.broker.join(app.settings.queue_name, timeout=10_000)  # type: ignore[attr-defined]
    finally:
        stop_worker(app, worker)
    assert load(app, 1).state == State.SENT
    assert len(email.sent) == 1 and len(attempts(app, 1)) == 1


def test_retry_through_redis_delay_queue_then_success(prod_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.RETRY, error_code="UNAVAILABLE", retry_after=0.2)],
    )
    app = prod_app(providers=fake_providers(push=push), delivery={"min_backoff_seconds": 0.1})
    nid = create_notification(app, create_patient(app), channels=[Channel.PUSH])
    worker = start_worker(app, threads=2)
    try:
        # Real time here: this test is about Redis's delay queue, so the clock must move with it.
        deadline = time.monotonic() + 20
        while load(app, nid).state != State.RETRYING and time.monotonic() < deadline:
            time.sleep(0.02)
        app.clock.advance(seconds=1)  # the injected clock passes not_before, as the wall clock passes the eta
        _wait_all_terminal(app, [nid])
    finally:
        stop_worker(app, worker)
    assert [a.outcome for a in attempts(app, nid)] == ["retry", "accepted"]


@pytest.mark.redis
def test_broker_epoch_tells_exactly_one_relay_that_redis_lost_its_queue(redis_namespace: str) -> None:
    import redis as redis_lib

    from worker.broker import BrokerEpoch, build_broker

    settings = make_settings(broker="redis", redis_url=REDIS_URL)
    brokers = [build_broker(settings, namespace=redis_namespace) for _ in range(2)]
    first, second = (BrokerEpoch(b, namespace=redis_namespace) for b in brokers)
    assert first.lost() is True, "a broker without our marker holds nothing of ours"
    assert first.lost() is False and second.lost() is False
    redis_lib.Redis.from_url(REDIS_URL).delete(f"{redis_namespace}:broker-epoch")  # a restart without persistence
    assert [second.lost(), first.lost()] == [True, False], "one scheduler refills, the other does not"
    for broker in brokers:
        broker.close()
