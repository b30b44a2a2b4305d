"""Appointment reminders: planned at 24 h and 2 h, rescheduled atomically, cancelled, re-checked at send time,
deferred by quiet hours, and caught up after downtime. The clock travels; nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlmodel import col

from integrations.fake import ScriptedProvider
from tests.conftest import create_patient, fake_providers, load, tick
from worker.appointments import cancel_appointment, create_appointment, reschedule_appointment
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.errors import InvalidInput
from worker.models import Notification
from worker.states import State


def _reminders(app) -> list[Notification]:  # type: ignore[no-untyped-def]
    with session_scope(app.engine) as session:
        rows = list(
            session.scalars(
                select(Notification)
                .where(col(Notification.category) == Category.APPOINTMENT_REMINDER)
                .order_by(col(Notification.id))
            )
        )
        for r in rows:
            session.expunge(r)
        return rows


@pytest.fixture
def setup(make_app):  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="sms", channel=Channel.SMS)
    app = make_app(providers=fake_providers(push=push, sms=sms))
    # 2 March 2026 18:00 UTC = 13:00 in New York.
    pid = create_patient(app, time_zone="America/New_York")
    return app, pid, push, sms


def test_plan_24h_and_2h_and_both_are_sent_on_time(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, sms = setup
    starts = app.clock.now() + timedelta(days=3)  # 5 March 13:00 New York
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    plan = _reminders(app)
    assert [r.not_before for r in plan] == [starts - timedelta(hours=24), starts - timedelta(hours=2)]
    # The 24 h reminder is superseded once the 2 h one is due; the 2 h one is useless after the start.
    assert [r.expires_at for r in plan] == [starts - timedelta(hours=2), starts]
    assert [r.idempotency_key for r in plan] == ["appt:1:v1:24h", "appt:1:v1:2h"]
    assert tick(app) == []
    app.clock.set(starts - timedelta(hours=24))
    assert len(tick(app)) == 1
    app.clock.set(starts - timedelta(hours=2))
    assert len(tick(app)) == 1
    assert [load(app, r.id).state for r in plan] == [State.SENT, State.SENT]
    # Healthcare texts are capped at one a day (TCPA exemption): the 2 h reminder goes by push only.
    assert len(push.sent) == 2 and len(sms.sent) == 1
    assert "frequency cap: 1 healthcare text a day" in load(app, plan[1].id).reason


def test_reschedule_replaces_the_plan_and_a_stale_reminder_is_never_sent(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = app.clock.now() + timedelta(days=3)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    old = _reminders(app)
    new_start = starts + timedelta(days=2)
    reschedule_appointment(app.engine, app.clock, app.settings, external_ref="a1", starts_at=new_start)
    assert [load(app, r.id).state for r in old] == [State.CANCELLED, State.CANCELLED]
    assert load(app, old[0].id).reason == "appointment rescheduled"
    new = [r for r in _reminders(app) if r.state == State.PENDING]
    assert [r.not_before for r in new] == [new_start - timedelta(hours=24), new_start - timedelta(hours=2)]
    # A message for an old reminder that was already in flight is refused by the send-time check.
    app.clock.set(starts - timedelta(hours=24))
    assert tick(app) == []
    assert push.sent == []


def test_send_time_recheck_cancels_a_reminder_queued_before_the_reschedule(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = app.clock.now() + timedelta(days=1, hours=1)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    first = _reminders(app)[0]
    app.clock.set(first.not_before)
    from worker.outbox import relay

    queued: list[int] = []
    relay(app.engine, app.clock, queued.extend, grace=timedelta(0), requeue_after=timedelta(minutes=15), batch_size=10)
    assert queued == [first.id]  # on the broker now
    # The appointment moves while the message waits; then a worker picks it up.
    with session_scope(app.engine) as session:
        from worker.models_scheduling import Appointment

        appt = session.scalars(select(Appointment)).one()
        appt.version += 1
    assert deliver(app.deps, first.id).state is State.CANCELLED
    assert load(app, first.id).reason == "appointment rescheduled; this reminder was for the old time"
    assert push.sent == []


def test_cancel_cancels_pending_reminders(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    create_appointment(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="a1",
        starts_at=app.clock.now() + timedelta(days=2),
    )
    cancel_appointment(app.engine, app.clock, external_ref="a1")
    assert {r.state for r in _reminders(app)} == {State.CANCELLED}
    app.clock.advance(days=3)
    assert tick(app) == [] and push.sent == []


def test_quiet_hours_defer_a_reminder_into_the_morning(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    # Appointment 4 March 09:00 New York (14:00 UTC): the 24 h reminder falls at 09:00 the day before (fine),
    # the 2 h reminder at 07:00 local: before 08:00, so it waits until 08:00 (13:00 UTC), still before the start.
    starts = datetime(2026, 3, 4, 14, 0, tzinfo=UTC)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    second = _reminders(app)[1]
    app.clock.set(second.not_before)
    tick(app)
    row = load(app, second.id)
    assert row.state == State.DEFERRED and row.not_before == datetime(2026, 3, 4, 13, 0, tzinfo=UTC)
    assert row.reason == "quiet hours: held until 08:00 America/New_York"
    app.clock.set(datetime(2026, 3, 4, 13, 0, tzinfo=UTC))
    assert second.id in tick(app)
    assert load(app, second.id).state == State.SENT


def test_reminder_that_would_wait_past_the_start_expires(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)  # 07:30 New York: the 2 h reminder is at 05:30
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    second = _reminders(app)[1]
    app.clock.set(second.not_before)
    tick(app)
    assert load(app, second.id).state == State.EXPIRED


def test_downtime_catch_up_sends_what_is_still_useful_and_expires_the_rest(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = app.clock.now() + timedelta(days=2)  # 4 March 13:00 New York
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    other_start = app.clock.now() + timedelta(days=1, hours=3)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a2", starts_at=other_start)
    third_start = app.clock.now() + timedelta(days=2, hours=20)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a3", starts_at=third_start)
    # The scheduler is down from now until 1 hour before the first appointment.
    app.clock.set(starts - timedelta(hours=1))
    tick(app)
    states = {(r.context["appointment_id"], r.context["offset_hours"]): load(app, r.id).state for r in _reminders(app)}
    # a1: the 2 h reminder is still before the start, so it goes late rather than never; the 24 h one is
    # superseded by it (one reminder, not two in the same minute).
    assert states[(1, 2.0)] == State.SENT and states[(1, 24.0)] == State.EXPIRED
    # a2 already started: its reminders expired, not sent.
    assert states[(2, 24.0)] == State.EXPIRED and states[(2, 2.0)] == State.EXPIRED
    # a3 (in 19 h): its 24 h reminder became due during the downtime and is still the latest useful one.
    assert states[(3, 24.0)] == State.SENT and states[(3, 2.0)] == State.PENDING
    assert (load(app, 1).reason or "").startswith("expired at")
    assert tick(app) == [], "nothing is sent twice on the next tick"


def test_bad_input_names_the_field(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, _, _ = setup
    with pytest.raises(InvalidInput, match="^starts_at: must be in the future"):
        create_appointment(
            app.engine,
            app.clock,
            app.settings,
            patient_id=pid,
            external_ref="x",
            starts_at=app.clock.now() - timedelta(hours=1),
        )
    assert _reminders(app) == []


def test_dst_change_reminder_follows_the_local_clock(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    # Monday 9 March 2026 08:30 EDT (12:30 UTC), the day after spring-forward. The 24 h reminder falls at
    # 12:30 UTC Sunday = 08:30 EDT (in the window); the 2 h reminder at 06:30 EDT (10:30 UTC) waits for
    # 08:00 EDT = 12:00 UTC (with EST's offset it would wrongly be 13:00 UTC, after the start).
    starts = datetime(2026, 3, 9, 12, 30, tzinfo=UTC)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    first, second = _reminders(app)
    app.clock.set(first.not_before)
    assert tick(app) == [first.id] and load(app, first.id).state == State.SENT
    app.clock.set(second.not_before)
    tick(app)
    row = load(app, second.id)
    assert row.state == State.DEFERRED and row.not_before == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    assert row.reason == "quiet hours: held until 08:00 America/New_York"
    app.clock.set(datetime(2026, 3, 9, 11, 59, tzinfo=UTC))
    assert tick(app) == []
    app.clock.set(datetime(2026, 3, 9, 12, 0, tzinfo=UTC))
    assert tick(app) == [second.id] and load(app, second.id).state == State.SENT


def test_reschedule_nearer_plans_only_what_is_ahead_and_moving_back_gets_fresh_keys(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = app.clock.now() + timedelta(days=3)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    near = app.clock.now() + timedelta(hours=5)
    reschedule_appointment(app.engine, app.clock, app.settings, external_ref="a1", starts_at=near)
    pending = [r for r in _reminders(app) if r.state == State.PENDING]
    assert [(r.context["version"], r.context["offset_hours"]) for r in pending] == [(2, 2.0)]
    assert pending[0].expires_at == near
    # Moving it back to the first time plans again (version 3), not blocked by version 1's idempotency keys.
    reschedule_appointment(app.engine, app.clock, app.settings, external_ref="a1", starts_at=starts)
    pending = [r for r in _reminders(app) if r.state == State.PENDING]
    assert [r.idempotency_key for r in pending] == ["appt:1:v3:24h", "appt:1:v3:2h"]
    assert len([r for r in _reminders(app) if r.state == State.CANCELLED]) == 3
    for offset in (24, 2):
        app.clock.set(starts - timedelta(hours=offset))
        tick(app)
    sent = [r.idempotency_key for r in _reminders(app) if load(app, r.id).state == State.SENT]
    assert sent == ["appt:1:v3:24h", "appt:1:v3:2h"] and len(push.sent) == 2


def test_a_cancelled_appointment_cannot_be_rescheduled_and_cancel_is_idempotent(setup) -> None:  # type: ignore[no-untyped-def]
    app, pid, push, _ = setup
    starts = app.clock.now() + timedelta(days=2)
    aid = create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    assert cancel_appointment(app.engine, app.clock, external_ref="a1") == aid
    assert cancel_appointment(app.engine, app.clock, external_ref="a1") == aid
    with pytest.raises(InvalidInput, match="^external_ref: the appointment was cancelled"):
        reschedule_appointment(
            app.engine, app.clock, app.settings, external_ref="a1", starts_at=starts + timedelta(days=1)
        )
    assert {r.state for r in _reminders(app)} == {State.CANCELLED}


def test_reminder_offsets_come_from_settings_and_bad_ones_are_refused(make_app) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="scheduling.reminder_offsets_hours"):
        make_settings(scheduling={"reminder_offsets_hours": [24, 0]})
    app = make_app(scheduling={"reminder_offsets_hours": [1, 48, 24]})
    pid = create_patient(app)
    starts = app.clock.now() + timedelta(days=3)
    create_appointment(app.engine, app.clock, app.settings, patient_id=pid, external_ref="a1", starts_at=starts)
    plan = _reminders(app)
    assert [r.context["offset_hours"] for r in plan] == [48, 24, 1]
    assert [r.expires_at for r in plan] == [starts - timedelta(hours=24), starts - timedelta(hours=1), starts]
