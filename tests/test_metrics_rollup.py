"""/metrics from the rollup equals a count of the tables from scratch, through every kind of change.

The scenario mixes every state, several providers and categories, rows that change after they were counted
(``sent -> delivered``; ``failed -> pending -> sent`` with a different provider), open rows that already have
attempts (``retrying``), an erasure of a patient whose rows were counted, one whose rows were not yet, and new
rows after it. After each rollup tick, the scrape (through the FastAPI app) must equal the from-scratch count
that ``/metrics`` used to run: on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlmodel import col

from integrations.base import Outcome, SendResult
from integrations.fake import ScriptedProvider
from tests.conftest import create_notification, create_patient, fake_providers, load
from worker.appointments import cancel_appointment, create_appointment
from worker.bootstrap import App
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.erasure import erase_patient
from worker.metrics.rollup import Marks, MetricsRollup, current_marks
from worker.models import DeliveryAttempt, Notification
from worker.models_consent import ConsentSource
from worker.models_metrics import NotificationCount, ProviderCallCount
from worker.outbox import transition
from worker.patients import upsert_patient
from worker.preferences import PreferenceChange, set_preferences
from worker.receipts import apply_twilio_status
from worker.settings import MetricsSettings
from worker.states import State
from worker.web.app import create_web_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def from_scratch(engine: Engine) -> Samples:
    """What /metrics used to compute on every scrape: a GROUP BY over every notification and attempt."""
    last_attempt = (
        select(func.max(col(DeliveryAttempt.id)))
        .where(col(DeliveryAttempt.notification_id) == col(Notification.id))
        .correlate(Notification)
        .scalar_subquery()
    )
    samples: Samples = {}
    with session_scope(engine) as session:
        for state, category, provider, count in session.execute(
            select(col(Notification.state), col(Notification.category), col(DeliveryAttempt.provider), func.count())
            .select_from(Notification)
            .outerjoin(DeliveryAttempt, col(DeliveryAttempt.id) == last_attempt)
            .group_by(col(Notification.state), col(Notification.category), col(DeliveryAttempt.provider))
        ):
            labels = (("category", str(category)), ("provider", provider or "none"), ("state", str(state)))
            samples[("carenotify_notifications", labels)] = float(count)
        for category, channel, provider, outcome, count in session.execute(
            select(
                col(Notification.category),
                col(DeliveryAttempt.channel),
                col(DeliveryAttempt.provider),
                col(DeliveryAttempt.outcome),
                func.count(),
            )
            .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
            .group_by(
                col(Notification.category),
                col(DeliveryAttempt.channel),
                col(DeliveryAttempt.provider),
                col(DeliveryAttempt.outcome),
            )
        ):
            labels = (
                ("category", str(category)),
                ("channel", str(channel)),
                ("outcome", str(outcome)),
                ("provider", str(provider)),
            )
            samples[("carenotify_provider_calls", labels)] = float(count)
    return samples


def scraped(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name in ("carenotify_notifications", "carenotify_provider_calls") and s.value
    }


def rolled_up_equals_scratch(app: App, client: TestClient) -> Samples:
    app.roll_up_metrics()
    expected = from_scratch(app.engine)
    assert scraped(client) == expected
    return expected


def count_tables(engine: Engine) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    with session_scope(engine) as session:
        return (
            {tuple(r) for r in session.execute(select(NotificationCount.__table__)) if r.count},  # type: ignore[attr-defined]
            {tuple(r) for r in session.execute(select(ProviderCallCount.__table__)) if r.count},  # type: ignore[attr-defined]
        )


def states(samples: Samples) -> Counter[str]:
    counts: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name == "carenotify_notifications":
            counts[dict(labels)["state"]] += int(value)
    return counts


def script(provider: ScriptedProvider, *outcomes: Outcome) -> None:
    """The provider's next answers (then it accepts again)."""
    provider._script.extend(SendResult(outcome=o, error_code=None if o is Outcome.ACCEPTED else "X") for o in outcomes)


def _settle(app: App, notification_id: int, target: State) -> None:
    with session_scope(app.engine) as session:
        row = session.get(Notification, notification_id)
        assert row is not None
        transition(session, row, target, reason="test", now=app.clock.now())


def _scenario(app: App, client: TestClient, push: ScriptedProvider) -> None:
    clock = app.clock
    assert rolled_up_equals_scratch(app, client) == {}  # nothing yet: the first tick counts nothing

    reach = create_patient(app, ref="reach")  # push, SMS and email
    sms_only = create_patient(app, ref="sms-only", devices=())
    nowhere = create_patient(app, ref="nowhere", devices=(), phone=None, email=None)
    muted = create_patient(app, ref="muted")
    set_preferences(
        app.engine,
        clock,
        patient_id=muted,
        changes=[PreferenceChange(Category.CARE_TEAM_MESSAGE, ch, False) for ch in Channel],
        source=ConsentSource.APP,
        actor="patient",
    )

    pushed = create_notification(app, reach)
    deliver(app.deps, pushed)  # sent by fake-push
    script(push, Outcome.FAILED)
    fell_back = create_notification(app, reach, category=Category.APPOINTMENT_REMINDER)
    deliver(app.deps, fell_back)  # push failed, sent by fake-sms
    by_sms = create_notification(app, sms_only)
    deliver(app.deps, by_sms)
    unreachable = create_notification(app, nowhere)
    deliver(app.deps, unreachable)  # failed, never sent: provider none
    deliver(app.deps, create_notification(app, muted))  # suppressed
    later = create_notification(app, reach, not_before=clock.now() + timedelta(days=1))  # pending, not due
    deliver(app.deps, later)
    expiring = create_notification(app, sms_only, expires_at=clock.now() + timedelta(minutes=1))
    script(push, Outcome.RETRY)
    retried = create_notification(app, reach, category=Category.SURVEY_REMINDER)
    deliver(app.deps, retried)
    assert load(app, retried).state == State.RETRYING  # open, with an attempt: counted live with fake-push

    first = rolled_up_equals_scratch(app, client)
    assert {"sent", "failed", "suppressed", "pending", "retrying"} <= set(states(first))

    # Appointment reminders planned, then cancelled; an expired row; the retry goes through.
    create_appointment(
        app.engine,
        clock,
        app.settings,
        patient_id=reach,
        external_ref="ap-1",
        starts_at=clock.now() + timedelta(days=3),
    )
    rolled_up_equals_scratch(app, client)
    cancel_appointment(app.engine, clock, external_ref="ap-1")
    clock.advance(minutes=5)
    deliver(app.deps, expiring)
    clock.advance(hours=2)
    deliver(app.deps, retried)
    assert load(app, retried).state == State.SENT
    second = rolled_up_equals_scratch(app, client)
    assert {"cancelled", "expired"} <= set(states(second))

    # Counted rows change: sent -> delivered (an SMS receipt), and failed -> pending -> sent by a new provider.
    sms_ref = next(a.provider_ref for a in _attempts(app, by_sms) if a.outcome == "accepted")
    assert apply_twilio_status(app.engine, clock, {"MessageSid": sms_ref, "MessageStatus": "delivered"}) == "delivered"
    third = rolled_up_equals_scratch(app, client)
    assert states(third)["delivered"] == 1
    upsert_patient(app.engine, clock, external_ref="nowhere", time_zone="America/New_York", phone="+12125550199")
    _settle(app, unreachable, State.PENDING)  # what a dead-letter replay does
    rolled_up_equals_scratch(app, client)
    deliver(app.deps, unreachable)
    assert load(app, unreachable).state == State.SENT
    rolled_up_equals_scratch(app, client)

    # Several changes between two ticks, and a tick in the middle of none.
    _settle(app, pushed, State.DELIVERED)
    _settle(app, fell_back, State.FAILED)
    rolled_up_equals_scratch(app, client)
    rolled_up_equals_scratch(app, client)

    # Erasure: a patient whose rows were all counted, with one more sent and not yet rolled up.
    deliver(app.deps, create_notification(app, reach))
    erase_patient(app.engine, clock, patient_id=reach, reason="under_13")
    after_erasure = rolled_up_equals_scratch(app, client)
    assert "reach" not in str(after_erasure)
    # Erasure before the rollup ever saw the patient's rows; then new rows, whose ids on SQLite must not reuse
    # the erased ones (AUTOINCREMENT), or they would land under the watermark and never be counted.
    late = create_patient(app, ref="late")
    deliver(app.deps, create_notification(app, late))
    erase_patient(app.engine, clock, patient_id=late, reason="under_13")
    rolled_up_equals_scratch(app, client)
    again = create_patient(app, ref="again")
    deliver(app.deps, create_notification(app, again))
    script(push, Outcome.TOKEN_DEAD)
    deliver(app.deps, create_notification(app, again, category=Category.ACCOUNT_NOTICE))
    final = rolled_up_equals_scratch(app, client)
    assert sum(states(final).values()) == _total(app)

    # The incremental counts are exactly what counting everything again gives.
    incremental = count_tables(app.engine)
    assert app.metrics_job.rebuild() == current_marks(app.engine)
    assert count_tables(app.engine) == incremental


def _attempts(app: App, notification_id: int) -> list[DeliveryAttempt]:
    with session_scope(app.engine) as session:
        return list(
            session.scalars(select(DeliveryAttempt).where(col(DeliveryAttempt.notification_id) == notification_id))
        )


def _total(app: App) -> int:
    with session_scope(app.engine) as session:
        return int(session.scalar(select(func.count()).select_from(Notification)) or 0)


def _app(make_app: Any, **settings: Any) -> tuple[App, ScriptedProvider]:
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH)
    return make_app(providers=fake_providers(push=push), **settings), push


def test_metrics_equal_a_count_from_scratch_on_sqlite(make_app) -> None:  # type: ignore[no-untyped-def]
    app, push = _app(make_app)
    with TestClient(create_web_app(app)) as client:
        _scenario(app, client, push)


@pytest.mark.postgres
def test_metrics_equal_a_count_from_scratch_on_postgres(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app, push = _app(make_app, database_url=pg_url)
    with TestClient(create_web_app(app)) as client:
        _scenario(app, client, push)


def test_settled_counts_lag_until_the_tick_and_open_ones_do_not(make_app) -> None:  # type: ignore[no-untyped-def]
    app, _ = _app(make_app)
    with TestClient(create_web_app(app)) as client:
        nid = create_notification(app, create_patient(app))
        pending = (("category", "care_team_message"), ("provider", "none"), ("state", "pending"))
        assert scraped(client) == {("carenotify_notifications", pending): 1}  # open: live, no tick needed
        deliver(app.deps, nid)
        assert scraped(client) == {}  # settled, not yet rolled up: the documented lag
        assert app.roll_up_metrics() > 0
        assert scraped(client) == from_scratch(app.engine) != {}
        assert app.roll_up_metrics() == 0  # nothing new


def test_a_backlog_is_caught_up_in_batches_across_ticks(make_app) -> None:  # type: ignore[no-untyped-def]
    app, _ = _app(make_app)
    with TestClient(create_web_app(app)) as client:
        patient = create_patient(app)
        deliver(app.deps, create_notification(app, patient))
        app.roll_up_metrics()  # the first tick counts set-based; later ones walk the logs
        for _ in range(6):
            deliver(app.deps, create_notification(app, patient))
        small = MetricsRollup(app.engine, app.clock, MetricsSettings(batch_size=2, max_per_tick=4))
        assert small.tick() == 4  # four ids this tick, not all of them
        assert scraped(client) != from_scratch(app.engine)
        while small.tick():
            pass
        assert scraped(client) == from_scratch(app.engine)


@pytest.mark.postgres
def test_a_mark_never_passes_an_id_whose_transaction_is_still_open(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL commits ids out of order: an attempt that drew id k and is still open while k+1 commits must
    not be skipped. The tick waits for it (barrier), or leaves the marks below it for the next tick."""
    app, _ = _app(make_app, database_url=pg_url, metrics={"barrier_wait_seconds": 0.2})
    with TestClient(create_web_app(app)) as client:
        patient = create_patient(app)
        slow, fast = create_notification(app, patient), create_notification(app, patient)
        app.roll_up_metrics()
        insert_attempt = text(
            "INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, started_at, "
            "duration_ms) VALUES (:n, 'push', 'slow-provider', 'device:1', 'accepted', now(), 0) RETURNING id"
        )
        with app.engine.connect() as open_tx:
            held = open_tx.execute(insert_attempt, {"n": slow}).scalar_one()  # drawn, not committed
            deliver(app.deps, fast)  # commits attempts and events with higher ids
            assert max(a.id for a in _attempts(app, fast) if a.id is not None) > held
            assert app.roll_up_metrics() == 0  # waited 0.2 s for the open writer, then left it for later
            assert current_marks(app.engine).attempt < held
            patient_rollup = MetricsRollup(app.engine, app.clock, MetricsSettings(barrier_wait_seconds=30))
            done = threading.Timer(0.1, open_tx.commit)
            done.start()
            assert patient_rollup.tick() > 0  # waits for that writer, which commits meanwhile
            done.join()
        assert current_marks(app.engine).attempt >= held
        assert app.roll_up_metrics() == 0  # the barrier it kept has resolved, and is already covered
        calls = scraped(client)
        assert calls == from_scratch(app.engine)
        slow_calls = (("category", "care_team_message"), ("channel", "push"), ("outcome", "accepted"))
        assert calls[("carenotify_provider_calls", (*slow_calls, ("provider", "slow-provider")))] == 1


def test_ids_erased_after_they_were_counted_are_never_handed_out_again(make_app) -> None:  # type: ignore[no-untyped-def]
    """SQLite reuses a deleted top rowid unless the table is AUTOINCREMENT (migration 0025): a new row would then
    land at or below the watermark and never be counted."""
    app, _ = _app(make_app)
    with TestClient(create_web_app(app)) as client:
        deliver(app.deps, create_notification(app, create_patient(app, ref="stays")))
        erased = create_patient(app, ref="erased")
        for _ in range(2):
            deliver(app.deps, create_notification(app, erased))  # the highest ids of both logs are hers
        rolled_up_equals_scratch(app, client)
        marks = current_marks(app.engine)
        erase_patient(app.engine, app.clock, patient_id=erased, reason="under_13")
        rolled_up_equals_scratch(app, client)
        fresh = create_notification(app, create_patient(app, ref="fresh"))
        deliver(app.deps, fresh)
        assert min(a.id or 0 for a in _attempts(app, fresh)) > marks.attempt
        assert (
            rolled_up_equals_scratch(app, client)[
                (
                    "carenotify_notifications",
                    (("category", "care_team_message"), ("provider", "fake-push"), ("state", "sent")),
                )
            ]
            == 2
        )


def test_two_rollups_never_count_the_same_rows_twice(make_app) -> None:  # type: ignore[no-untyped-def]
    """Two schedulers: each tick takes the cursor's lock, re-reads the marks and moves from there."""
    app, _ = _app(make_app)
    other = MetricsRollup(app.engine, app.clock, app.settings.metrics)
    with TestClient(create_web_app(app)) as client:
        patient = create_patient(app)
        for round_ in range(3):
            for _ in range(3):
                deliver(app.deps, create_notification(app, patient))
            (app.metrics_job if round_ % 2 else other).tick()
            other.tick()
            app.roll_up_metrics()
            assert scraped(client) == from_scratch(app.engine)
    assert current_marks(app.engine) > Marks(0, 0)


@pytest.mark.postgres
def test_a_tick_skips_while_another_holds_the_cursor(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    """Another scheduler's tick (or an erasure) holds the cursor's lock: this tick returns at once, counting
    nothing, and the next one catches up."""
    app, _ = _app(make_app, database_url=pg_url)
    with TestClient(create_web_app(app)) as client:
        patient = create_patient(app)
        deliver(app.deps, create_notification(app, patient))
        app.roll_up_metrics()
        deliver(app.deps, create_notification(app, patient))
        with app.engine.connect() as other:
            other.execute(text("SELECT * FROM metrics_cursor FOR UPDATE"))
            assert app.roll_up_metrics() == 0
            other.rollback()
        assert app.roll_up_metrics() > 0
        assert scraped(client) == from_scratch(app.engine)


def test_the_scheduler_runs_the_rollup_at_its_interval(make_app) -> None:  # type: ignore[no-untyped-def]
    from apscheduler.schedulers.background import BackgroundScheduler

    from jobs.scheduler import add_jobs

    app, _ = _app(make_app, metrics={"rollup_interval_seconds": 7})
    job = add_jobs(BackgroundScheduler(timezone="UTC"), app).get_job("metrics_rollup")
    assert job is not None and job.trigger.interval == timedelta(seconds=7)
    assert job.max_instances == 1 and job.coalesce
