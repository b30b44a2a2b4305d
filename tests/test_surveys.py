"""Survey cadence: a first notice and N reminders every K days; completing the survey stops them."""

from __future__ import annotations

from datetime import timedelta

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
from worker.surveys import assign_survey, complete_survey


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
    assert [n.not_before - notices[0].not_before for n in notices] == [timedelta(days=d) for d in (0, 2, 4, 6)]
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
