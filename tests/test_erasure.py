"""Erasure deletes a patient's data everywhere and cancels queued work (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from integrations.fake import ScriptedProvider
from tests.conftest import REDIS_URL, create_notification, create_patient, fake_providers
from worker.appointments import create_appointment
from worker.categories import Category, Channel
from worker.db import session_scope
from worker.delivery import deliver
from worker.delivery.claims import claim
from worker.erasure import erase_patient
from worker.errors import NotFound
from worker.models_consent import ConsentSource
from worker.preferences import PreferenceChange, set_preferences
from worker.schema import load_all_models


def _rows_about(app, patient_id: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Rows referring to the patient, in every table that has a patient_id (new tables are covered too)."""
    counts = {}
    with session_scope(app.engine) as session:
        for table in load_all_models().sorted_tables:
            if "patient_id" in table.c:
                counts[table.name] = (
                    session.scalar(select(func.count()).select_from(table).where(table.c.patient_id == patient_id)) or 0
                )
    return counts


def _erase_scenario(app) -> None:  # type: ignore[no-untyped-def]
    push = app.providers[Channel.PUSH][0]
    keep = create_patient(app, ref="keep")
    child = create_patient(app, ref="child", devices=(("ios", "a"), ("android", "b")))
    for pid in (keep, child):
        set_preferences(
            app.engine,
            app.clock,
            patient_id=pid,
            changes=[PreferenceChange(Category.SURVEY_REMINDER, Channel.SMS, False)],
            source=ConsentSource.APP,
            actor="patient",
        )
        create_appointment(
            app.engine,
            app.clock,
            app.settings,
            patient_id=pid,
            external_ref=f"appt-{pid}",
            starts_at=app.clock.now() + timedelta(days=3),
        )
    sent = create_notification(app, child)
    deliver(app.deps, sent)
    in_flight = create_notification(app, child)
    assert (
        claim(app.engine, app.clock, in_flight, lease=timedelta(minutes=5), holder="test-worker") is not None
    )  # a worker holds it
    before = len(push.sent)

    assert sum(_rows_about(app, child).values()) > 0
    cancelled = erase_patient(app.engine, app.clock, patient_id=child, reason="under 13")
    assert cancelled == 3  # the two appointment reminders and the message a worker had claimed
    assert set(_rows_about(app, child).values()) == {0}
    assert sum(_rows_about(app, keep).values()) > 0
    with session_scope(app.engine) as session:
        from worker.models import Device, Notification, Patient

        assert session.scalar(select(func.count()).select_from(Patient)) == 1
        assert session.scalar(select(func.count()).select_from(Device)) == 1
        remaining = session.scalars(select(Notification.patient_id)).all()
        assert set(remaining) == {keep}
    # The worker that had claimed it finds nothing to send.
    report = deliver(app.deps, in_flight)
    assert report.state is None and len(push.sent) == before
    with pytest.raises(NotFound):
        erase_patient(app.engine, app.clock, patient_id=child, reason="again")


def test_erasure_on_sqlite(make_app) -> None:  # type: ignore[no-untyped-def]
    _erase_scenario(make_app(providers=fake_providers(push=ScriptedProvider(name="push"))))


@pytest.mark.postgres
def test_erasure_on_postgres(make_app, pg_url: str, redis_namespace: str) -> None:  # type: ignore[no-untyped-def]
    _erase_scenario(
        make_app(
            providers=fake_providers(push=ScriptedProvider(name="push")),
            database_url=pg_url,
            broker="redis",
            redis_url=REDIS_URL,
            broker_namespace=redis_namespace,
            migrate=False,
        )
    )
