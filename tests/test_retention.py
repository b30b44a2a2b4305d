"""Retention (worker/retention): old settled notifications go with their logs, in small bounded batches, the
/metrics rollup keeps matching the database; the consent ledger keeps what is in force and the evidence of the
look-back period; ``carenotify db purge [--dry-run]`` as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlmodel import col

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers
from worker.bootstrap import App
from worker.care_pause import set_pause
from worker.categories import Category, Channel
from worker.clock import FrozenClock
from worker.consent import record_consent
from worker.db import make_engine, session_scope
from worker.delivery import deliver
from worker.metrics.rollup import Marks, call_counts, current_marks, read_counts, settled_counts
from worker.migrate import upgrade
from worker.models import DeliveryAttempt, Notification, NotificationEvent
from worker.models_consent import CarePauseEvent, ConsentEvent, ConsentSource, PauseReason
from worker.outbox import transition
from worker.patients import upsert_patient
from worker.states import State

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request, make_app) -> App:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(
        name="fake-push",
        channel=Channel.PUSH,
        script=[SendResult(outcome=Outcome.ACCEPTED)] * 3 + [SendResult(outcome=Outcome.FAILED, error_code="400")],
    )
    options = {"retention": {"batch_size": 2, "max_per_tick": 4}}
    if request.param == "postgres":
        return make_app(  # type: ignore[no-any-return]
            providers=fake_providers(push=push),
            database_url=request.getfixturevalue("pg_url"),
            migrate=False,
            **options,
        )
    return make_app(providers=fake_providers(push=push), **options)  # type: ignore[no-any-return]


def _count(app: App, model: type) -> int:
    with session_scope(app.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _ids(app: App) -> set[int]:
    with session_scope(app.engine) as session:
        return {int(i) for i in session.scalars(select(col(Notification.id)))}


def _metrics_match_the_database(app: App) -> None:
    """What /metrics reports (the rollup) equals a count of what the database holds at the rollup's marks."""
    marks = current_marks(app.engine)
    assert marks != Marks(0, 0)
    with app.engine.connect() as conn:
        settled, calls = read_counts(conn)
        assert Counter(dict(settled)) == +settled_counts(conn, marks)
        assert Counter(dict(calls)) == +call_counts(conn, 0, marks.attempt)


def test_old_settled_notifications_go_with_their_logs_in_bounded_batches(app: App) -> None:
    pid = create_patient(app)
    old_sent = [create_notification(app, pid, channels=[Channel.PUSH]) for _ in range(3)]
    replayed = create_notification(app, pid, channels=[Channel.PUSH])  # the provider refuses it: failed
    for nid in [*old_sent, replayed]:
        deliver(app.deps, nid)
    old_sent.append(create_notification(app, pid, category=Category.ACCOUNT_NOTICE))
    deliver(app.deps, old_sent[-1])
    waiting = create_notification(app, pid, not_before=app.clock.now() + timedelta(days=500))
    app.roll_up_metrics()
    app.clock.advance(days=200)
    middle = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    deliver(app.deps, middle)
    app.clock.advance(days=201)  # the first ones settled 401 days ago, the middle one 201
    young = create_notification(app, pid, category=Category.ACCOUNT_NOTICE)
    deliver(app.deps, young)
    # An operator replays the old failed one (a dead letter): it is open again, so it stays.
    with session_scope(app.engine) as session:
        row = session.get(Notification, replayed)
        assert row is not None and row.state == State.FAILED
        transition(session, row, State.PENDING, reason="replayed by an operator", now=app.clock.now())
    app.roll_up_metrics()
    _metrics_match_the_database(app)

    job = app.retention_job
    due = job.due()
    assert due["notification"] == 4 and due["delivery_attempt"] == 4
    assert due["notification_event"] == 4 * 3  # created, claimed, sent

    statements: list[str] = []

    def deletes(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("DELETE FROM NOTIFICATION "):
            statements.append(statement)

    event.listen(app.engine, "before_cursor_execute", deletes)
    try:
        first = job.tick()  # at most 4 rows examined per table, 2 per transaction
    finally:
        event.remove(app.engine, "before_cursor_execute", deletes)
    # Ids 1-4 examined (the 4th, replayed, is kept), in two transactions; the 5th waits for the next tick.
    assert first["notification"] == 3 and len(statements) == 2
    assert job.tick()["notification"] == 1
    assert _ids(app) == {replayed, waiting, middle, young}
    assert job.tick()["notification"] == 0, "the rest is young, open or replayed"
    assert _count(app, DeliveryAttempt) == 3 and _count(app, NotificationEvent) == 4 + 1 + 3 + 3
    assert sum(job.due().values()) == 0
    _metrics_match_the_database(app)
    app.roll_up_metrics()
    _metrics_match_the_database(app)


def _consent(app: App, pid: int, channel: Channel, category: Category | None, granted: bool) -> None:
    with session_scope(app.engine) as session:
        record_consent(
            session,
            patient_id=pid,
            channel=channel,
            category=category,
            granted=granted,
            source=ConsentSource.APP,
            actor="test",
            at=app.clock.now(),
        )


def _ledger(app: App, model: type[ConsentEvent] | type[CarePauseEvent]) -> list[tuple[int, datetime]]:
    with session_scope(app.engine) as session:
        return [(int(e.patient_id), e.at) for e in session.scalars(select(model).order_by(col(model.id)))]


def test_the_ledger_keeps_what_is_in_force_and_the_look_back_evidence(app: App) -> None:
    start = app.clock.now()
    a, b = create_patient(app, ref="a"), create_patient(app, ref="b")
    _consent(app, a, Channel.EMAIL, Category.MARKETING, False)  # replaced a year later: deletable after 5 more
    _consent(app, b, Channel.SMS, Category.MARKETING, True)  # the opt-in behind texts sent until last year
    _consent(app, b, Channel.PUSH, Category.MARKETING, False)  # her current choice, however old: kept
    _consent(app, b, Channel.SMS, None, False)  # another key: does not replace the SMS marketing opt-in
    set_pause(
        app.engine,
        app.clock,
        patient_id=a,
        reason=PauseReason.NICU_STAY,
        until=None,
        hold_appointment_reminders=False,
        source=ConsentSource.API,
        actor="api:x",
    )
    app.clock.advance(days=365)
    _consent(app, a, Channel.EMAIL, Category.MARKETING, True)
    set_pause(
        app.engine,
        app.clock,
        patient_id=a,
        reason=PauseReason.PATIENT_REQUEST,
        until=None,
        hold_appointment_reminders=False,
        source=ConsentSource.API,
        actor="api:x",
    )
    app.clock.advance(days=5 * 365)
    _consent(app, b, Channel.SMS, Category.MARKETING, False)  # replaces the 6-year-old opt-in only now
    app.clock.advance(days=2)
    assert app.retention_job.due()["consent_event"] == 1
    assert app.retention_job.due()["care_pause_event"] == 1
    deleted = app.retention_job.purge_all()
    assert deleted == Counter({"consent_event": 1, "care_pause_event": 1})
    year = timedelta(days=365)
    assert _ledger(app, ConsentEvent) == [(b, start), (b, start), (b, start), (a, start + year), (b, start + 6 * year)]
    assert _ledger(app, CarePauseEvent) == [(a, start + year)]


def test_db_purge_dry_run_and_purge_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    then = FrozenClock(datetime(2024, 1, 2, 15, 0, tzinfo=UTC))  # far more than 400 days ago
    pid = upsert_patient(engine, then, external_ref="pt-old", time_zone="America/New_York")
    with session_scope(engine) as session:
        for index, state in enumerate([State.SENT, State.SUPPRESSED, State.PENDING]):
            row = Notification(
                patient_id=pid,
                category=Category.ACCOUNT_NOTICE,
                idempotency_key=f"old-{index}",
                state=state,
                reason="test",
                created_at=then.now(),
                updated_at=then.now(),
                finished_at=then.now() if state is not State.PENDING else None,
                not_before=then.now() + timedelta(days=3650) if state is State.PENDING else None,
            )
            session.add(row)
            session.flush()
            session.add(
                NotificationEvent(
                    notification_id=row.id or 0, from_state=None, to_state=state, reason="x", at=then.now()
                )
            )
    engine.dispose()
    env = {**os.environ, "CARENOTIFY_DATABASE_URL": f"sqlite:///{db}"}

    def run(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "db", "purge", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    dry = run("--dry-run")
    assert dry["dry_run"] is True
    assert dry["would_delete"] == {
        "notification": 2,
        "notification_event": 2,
        "delivery_attempt": 0,
        "idempotency_record": 0,
        "webhook_receipt": 0,
        "consent_event": 0,
        "care_pause_event": 0,
        "webhook_delivery": 0,
        "webhook_event": 0,
    }
    assert run("--dry-run") == dry, "a dry run deletes nothing"
    done = run()
    assert done["deleted"] == dry["would_delete"]
    assert run("--dry-run")["would_delete"] == dict.fromkeys(dry["would_delete"], 0)  # type: ignore[arg-type]
