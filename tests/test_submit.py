"""The outbox: a row is committed before anything is enqueued; one idempotency key, one notification."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import create_patient, load
from worker.categories import Category
from worker.db import session_scope
from worker.errors import InvalidInput, NotFound
from worker.models import Notification
from worker.outbox import submit
from worker.states import State


def test_row_is_committed_before_enqueue(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    seen: list[State] = []

    def enqueue(notification_id: int) -> None:
        # A different session: only committed data is visible.
        with session_scope(app.engine) as session:
            row = session.get(Notification, notification_id)
            assert row is not None
            seen.append(State(row.state))

    result = submit(app.engine, app.clock, enqueue, patient_id=pid, category="care_team_message", idempotency_key="k1")
    assert seen == [State.PENDING]
    assert load(app, result.notification_id).enqueued_at == app.clock.now()


def test_same_idempotency_key_gives_the_same_notification(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    calls: list[int] = []
    first = submit(
        app.engine, app.clock, calls.append, patient_id=pid, category="care_team_message", idempotency_key="k"
    )
    second = submit(
        app.engine, app.clock, calls.append, patient_id=pid, category="care_team_message", idempotency_key="k"
    )
    assert first.created and not second.created
    assert first.notification_id == second.notification_id
    assert calls == [first.notification_id]
    with session_scope(app.engine) as session:
        assert len(session.scalars(select(Notification)).all()) == 1


def test_bad_input_names_the_field_and_writes_nothing(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    with pytest.raises(InvalidInput, match="^category: unknown category"):
        submit(app.engine, app.clock, lambda _: None, patient_id=pid, category="gossip", idempotency_key="k")
    with pytest.raises(InvalidInput, match="^idempotency_key"):
        submit(app.engine, app.clock, lambda _: None, patient_id=pid, category="marketing", idempotency_key="")
    with pytest.raises(NotFound, match="patient 999"):
        submit(app.engine, app.clock, lambda _: None, patient_id=999, category="marketing", idempotency_key="k")
    with session_scope(app.engine) as session:
        assert session.scalars(select(Notification)).all() == []


def test_scheduled_row_is_not_enqueued_until_due(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app()
    pid = create_patient(app)
    calls: list[int] = []
    result = submit(
        app.engine,
        app.clock,
        calls.append,
        patient_id=pid,
        category=Category.SURVEY_REMINDER,
        idempotency_key="later",
        not_before=app.clock.now() + timedelta(hours=2),
        ttl=timedelta(hours=1),
    )
    row = load(app, result.notification_id)
    assert calls == [] and row.enqueued_at is None
    assert row.expires_at == app.clock.now() + timedelta(hours=3)
