"""Survey cadence: a first notice and N reminders every K days; completing the survey stops them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlmodel import col

from integrations.fake import ScriptedProvider
from tests.conftest import create_patient, fake_providers, load, tick
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.errors import InvalidInput
from worker.models import Notification
from worker.states import State
from worker.surveys import assign_survey, cadence, complete_survey

NY = ZoneInfo("America/New_York")


def _notices(app) -> list[Notification]:  # type: ignore[no-untyped-def]
    with session_scope(app.engine) as session:
        rows = list(
            session.scalars(
                select(Notification)
                .where(col(Notification.category) == Category.SURVEY_REMINDER)
                .order_by(col(Notification.id))
            )
        )
        for r in rows:
            session.expunge(r)
        return rows


def test_cadence_and_completion_stops_the_rest(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    pid = create_patient(app)
    assign_survey(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="s1",
        survey_key="2w-postpartum",
        reminders=3,
        interval_days=2,
    )
    notices = _notices(app)
    # 2, 4, 6 calendar days later at the same New York wall time (13:00): the 8 March DST change makes the
    # last gap one hour shorter in UTC.
    assert [n.not_before.astimezone(NY).strftime("%d %H:%M") for n in notices] == [
        "02 13:00",
        "04 13:00",
        "06 13:00",
        "08 13:00",
    ]
    assert notices[3].not_before - notices[2].not_before == timedelta(hours=47)
    assert [n.expires_at for n in notices[:3]] == [n.not_before for n in notices[1:]]
    assert len(tick(app)) == 1
    app.clock.advance(days=2)
    assert len(tick(app)) == 1
    complete_survey(app.engine, app.clock, external_ref="s1")
    assert [load(app, n.id).state for n in notices] == [State.SENT, State.SENT, State.CANCELLED, State.CANCELLED]
    assert load(app, notices[2].id).reason == "survey completed"
    app.clock.advance(days=10)
    assert tick(app) == [] and len(push.sent) == 2


def test_missed_notice_expires_instead_of_piling_up(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    pid = create_patient(app)
    assign_survey(
        app.engine,
        app.clock,
        app.settings,
        patient_id=pid,
        external_ref="s1",
        survey_key="k",
        reminders=2,
        interval_days=3,
    )
    app.clock.advance(days=3, hours=1)  # the scheduler was down through the first notice's whole life
    tick(app)
    assert [load(app, n.id).state for n in _notices(app)] == [State.EXPIRED, State.SENT, State.PENDING]


def test_completed_survey_is_rechecked_at_send_time(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    pid = create_patient(app)
    sid = assign_survey(
        app.engine, app.clock, app.settings, patient_id=pid, external_ref="s1", survey_key="k", reminders=0
    )
    [notice] = _notices(app)
    with session_scope(app.engine) as session:  # completed by another path while the message was queued
        from worker.models_scheduling import SurveyAssignment

        assignment = session.get(SurveyAssignment, sid)
        assert assignment is not None
        assignment.completed_at = app.clock.now()
    assert deliver(app.deps, notice.id).state is State.CANCELLED


def test_bad_cadence_is_refused_naming_the_field(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    with pytest.raises(InvalidInput, match="^interval_days"):
        assign_survey(
            app.engine, app.clock, app.settings, patient_id=pid, external_ref="s", survey_key="k", interval_days=0
        )


def test_cadence_keeps_the_local_time_across_fall_back_and_skips_past_a_gap() -> None:
    # 10:00 EDT on 30 October 2026, weekly: 6 November is 10:00 EST, i.e. 15:00 UTC instead of 14:00.
    first = datetime(2026, 10, 30, 14, 0, tzinfo=UTC)
    assert cadence(first, 1, 7, NY) == [first, datetime(2026, 11, 6, 15, 0, tzinfo=UTC)]
    # 02:30 EST on 7 March: the next day's 02:30 does not exist, the notice goes at 03:30 EDT (07:30 UTC).
    night = datetime(2026, 3, 7, 7, 30, tzinfo=UTC)
    assert cadence(night, 1, 1, NY)[1] == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_a_notice_due_in_quiet_hours_waits_for_the_morning(make_app) -> None:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="push", channel=Channel.PUSH)
    app = make_app(providers=fake_providers(push=push))
    pid = create_patient(app)
    app.clock.set(datetime(2026, 3, 3, 4, 0, tzinfo=UTC))  # 23:00 New York
    assign_survey(app.engine, app.clock, app.settings, patient_id=pid, external_ref="s1", survey_key="k", reminders=1)
    first = _notices(app)[0]
    tick(app)
    assert load(app, first.id).state == State.DEFERRED
    assert load(app, first.id).not_before == datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    app.clock.set(datetime(2026, 3, 3, 13, 0, tzinfo=UTC))
    assert tick(app) == [first.id] and len(push.sent) == 1
