"""On PostgreSQL: two scheduler processes at once send nothing twice, and the due-scan uses the index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlmodel import col

from integrations.fake import ScriptedProvider
from tests.conftest import REDIS_URL, create_patient, fake_providers
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.models import DeliveryAttempt, Notification
from worker.outbox import add_notification
from worker.outbox.relay import _due_conditions
from worker.runtime import start_worker, stop_worker
from worker.states import State

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ROOT = Path(__file__).resolve().parents[1]


def test_two_scheduler_processes_send_each_due_reminder_once(make_app, pg_url: str, redis_namespace: str) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(
        providers=fake_providers(push=push),
        database_url=pg_url,
        broker="redis",
        redis_url=REDIS_URL,
        broker_namespace=redis_namespace,
        migrate=False,
    )
    pid = create_patient(app, time_zone="UTC")
    due_at = datetime.now(UTC) + timedelta(seconds=2)
    with session_scope(app.engine) as session:
        for i in range(150):
            add_notification(
                session,
                datetime.now(UTC),
                patient_id=pid,
                category=Category.CARE_TEAM_MESSAGE,
                idempotency_key=f"due-{i}",
                not_before=due_at,
                channels=[Channel.PUSH],
            )
    app.clock.set(
        due_at + timedelta(minutes=1)
    )  # the worker's clock: past the due time (schedulers use the wall clock)
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": pg_url,
        "CARENOTIFY_BROKER": "redis",
        "CARENOTIFY_REDIS_URL": REDIS_URL,
        "CARENOTIFY_REDIS_NAMESPACE": redis_namespace,
        "CARENOTIFY_OUTBOX__RELAY_INTERVAL_SECONDS": "0.1",
        "CARENOTIFY_OUTBOX__BATCH_SIZE": "20",
    }
    schedulers = [
        subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "scheduler"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    worker = start_worker(app, threads=4)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with session_scope(app.engine) as session:
                sent = session.scalar(
                    select(func.count()).select_from(Notification).where(col(Notification.state) == State.SENT)
                )
            if sent == 150:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let both schedulers tick a few more times over settled rows
    finally:
        for proc in schedulers:
            proc.send_signal(signal.SIGTERM)
        for proc in schedulers:
            proc.wait(timeout=20)
        stop_worker(app, worker)
    with session_scope(app.engine) as session:
        attempts = session.scalar(select(func.count()).select_from(DeliveryAttempt))
    assert sent == 150 and attempts == 150
    assert sorted(m.notification_id for m in push.sent) == list(range(1, 151)), "every reminder sent exactly once"


def test_due_scan_uses_the_partial_index_with_many_future_rows(pg_url: str) -> None:
    from worker.db import make_engine

    engine = make_engine(pg_url)
    now = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "VALUES ('scan', 'UTC', 'en', now(), now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO notification (patient_id, category, context, idempotency_key, state, not_before, "
                "attempt_count, created_at, updated_at) "
                "SELECT 1, 'survey_reminder', '{}', 'f' || g, 'pending', :now + (g || ' minutes')::interval, "
                "0, :now, :now "
                "FROM generate_series(1, 50000) g"
            ),
            {"now": now},
        )
        conn.execute(text("UPDATE notification SET state = 'sent' WHERE id % 2 = 0"))
        conn.execute(text("ANALYZE notification"))
        for condition in _due_conditions(now, timedelta(seconds=10), timedelta(minutes=15)):
            query = select(col(Notification.id)).where(condition).order_by(col(Notification.id)).limit(500)
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            plan = "\n".join(row[0] for row in conn.execute(text(f"EXPLAIN {compiled}")))
            assert "ix_notification_due" in plan, plan
            assert "Seq Scan on notification" not in plan, plan
    engine.dispose()


def _due_rows(app, count: int) -> None:  # type: ignore[no-untyped-def]
    pid = create_patient(app, time_zone="UTC")
    with session_scope(app.engine) as session:
        for i in range(count):
            add_notification(
                session,
                app.clock.now(),
                patient_id=pid,
                category=Category.APPOINTMENT_REMINDER,
                idempotency_key=f"due-{i}",
                not_before=app.clock.now() - timedelta(minutes=1),
                channels=[Channel.PUSH],
            )


def test_relayed_rows_are_unlocked_when_their_message_arrives(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """The relay commits its stamps before it enqueues: a worker that gets the message at once claims the row
    (it used to find it locked, skip it, and leave it invisible for 15 minutes). If the broker then refuses
    the rest, the stamps are undone and the next tick queues those rows. Each row is queued once."""
    from worker.delivery.claims import claim
    from worker.models import Notification
    from worker.outbox import relay

    app = make_app(database_url=pg_url, migrate=False)
    _due_rows(app, 100)
    taken: list[object] = []

    def fast_worker_then_broker_down(ids: Sequence[int]) -> None:
        taken.append(claim(app.engine, app.clock, ids[0], lease=timedelta(seconds=6), holder="fast-worker"))
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        relay(
            app.engine,
            app.clock,
            fast_worker_then_broker_down,
            grace=timedelta(0),
            requeue_after=timedelta(minutes=15),
            batch_size=50,
        )
    assert isinstance(taken[0], Notification), "the row was claimable while the relay was still enqueuing"
    queued: list[int] = []

    def tick() -> int:
        return relay(
            app.engine,
            app.clock,
            queued.extend,
            grace=timedelta(0),
            requeue_after=timedelta(minutes=15),
            batch_size=500,
        )

    assert tick() == 99, "the 49 the broker refused come back at once, with the 50 never taken"
    assert tick() == 0
    assert sorted(queued) == list(range(2, 101))


def test_downtime_catch_up_on_postgresql(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """Reminders that became due while no scheduler ran: sent if still useful, expired if not."""
    from tests.conftest import load, tick
    from worker.appointments import create_appointment
    from worker.surveys import assign_survey

    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push), database_url=pg_url, migrate=False)
    pid = create_patient(app, time_zone="America/Chicago")
    now = app.clock.now()  # 2 March 2026 12:00 in Chicago
    soon = create_appointment(
        app.engine, app.clock, app.settings, patient_id=pid, external_ref="soon", starts_at=now + timedelta(hours=30)
    )
    past = create_appointment(
        app.engine, app.clock, app.settings, patient_id=pid, external_ref="past", starts_at=now + timedelta(hours=26)
    )
    assign_survey(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="s",
        survey_key="k",
        reminders=2,
        interval_days=1,
    )
    app.clock.advance(hours=27)  # down for 27 hours: 15:00 in Chicago the next day
    tick(app)
    with session_scope(app.engine) as session:
        rows = list(session.scalars(select(Notification).order_by(col(Notification.id))))
    by_key = {r.idempotency_key: load(app, r.id).state for r in rows}
    assert by_key[f"appt:{soon}:v1:24h"] == State.SENT  # due 21 h ago, the start is 3 h ahead: still useful
    assert by_key[f"appt:{soon}:v1:2h"] == State.PENDING
    assert by_key[f"appt:{past}:v1:24h"] == State.EXPIRED and by_key[f"appt:{past}:v1:2h"] == State.EXPIRED
    # Survey: the first notice was superseded by the reminder due 3 h ago, which goes; the last one waits.
    survey = [by_key[f"survey:1:{i}"] for i in range(3)]
    assert survey == [State.EXPIRED, State.SENT, State.PENDING]
    assert len(push.sent) == 2
    assert tick(app) == []
