"""Appointments and surveys through the API: plans are made, moved and cancelled by the platform's calls."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlmodel import col

from tests.web.conftest import Api, add_patient, assert_refused
from worker.db import session_scope
from worker.models import Notification
from worker.states import State


def _plan(api: Api, key: str) -> list[tuple[str, str, str | None]]:
    """(state, not_before, reason) of the notifications planned for a context key."""
    with session_scope(api.app.engine) as session:
        rows = session.scalars(select(Notification).order_by(col(Notification.id))).all()
        return [
            (str(r.state), r.not_before.isoformat() if r.not_before else "", r.reason) for r in rows if key in r.context
        ]


def test_appointment_create_reschedule_cancel(api: Api) -> None:
    add_patient(api, "pt-1")
    start = api.app.clock.now() + timedelta(days=3)
    body = {"appointment_ref": "ap-1", "patient_ref": "pt-1", "starts_at": start.isoformat()}
    created = api.client.post("/v1/appointments", json=body, headers=api.auth)
    assert created.status_code == 200 and created.json() == {"appointment_id": 1, "appointment_ref": "ap-1"}
    assert api.client.post("/v1/appointments", json=body, headers=api.auth).json()["appointment_id"] == 1
    first_plan = _plan(api, "appointment_id")
    assert [p[0] for p in first_plan] == ["pending"] * len(first_plan) and first_plan

    later = (start + timedelta(days=1)).isoformat()
    moved = api.client.post("/v1/appointments/ap-1/reschedule", json={"starts_at": later}, headers=api.auth)
    assert moved.status_code == 200
    plan = _plan(api, "appointment_id")
    assert [p[0] for p in plan[: len(first_plan)]] == ["cancelled"] * len(first_plan)
    assert [p[0] for p in plan[len(first_plan) :]] == ["pending"] * len(first_plan)

    assert api.client.post("/v1/appointments/ap-1/cancel", headers=api.auth).status_code == 200
    assert {p[0] for p in _plan(api, "appointment_id")} == {State.CANCELLED}


def test_appointment_refusals_name_the_field(api: Api) -> None:
    add_patient(api, "pt-2")
    future = (api.app.clock.now() + timedelta(days=1)).isoformat()
    cases = [
        ({"appointment_ref": "a", "patient_ref": "nobody", "starts_at": future}, 404, "patient_ref"),
        ({"appointment_ref": "a", "patient_ref": "pt-2", "starts_at": "2026-03-10T10:00:00"}, 422, "starts_at"),
        ({"appointment_ref": "a", "patient_ref": "pt-2", "starts_at": "9999-12-31T23:00:00Z"}, 422, "starts_at"),
        ({"appointment_ref": "a", "patient_ref": "pt-2", "starts_at": "2020-01-01T10:00:00Z"}, 422, "starts_at"),
        ({"patient_ref": "pt-2", "starts_at": future}, 422, "appointment_ref"),
    ]
    for body, status, field in cases:
        assert_refused(api.client.post("/v1/appointments", json=body, headers=api.auth), status, field)
    missing = api.client.post("/v1/appointments/nope/reschedule", json={"starts_at": future}, headers=api.auth)
    assert_refused(missing, 404, "appointment_ref")
    assert_refused(api.client.post("/v1/appointments/nope/cancel", headers=api.auth), 404, "appointment_ref")
    assert _plan(api, "appointment_id") == []


def test_survey_assign_and_complete(api: Api) -> None:
    add_patient(api, "pt-3")
    body = {"assignment_ref": "sv-1", "patient_ref": "pt-3", "survey_key": "postpartum-2w", "reminders": 2}
    assigned = api.client.post("/v1/surveys", json=body, headers=api.auth)
    assert assigned.status_code == 200 and assigned.json() == {"survey_assignment_id": 1, "assignment_ref": "sv-1"}
    assert len(_plan(api, "survey_assignment_id")) == 3
    done = api.client.post("/v1/surveys/sv-1/complete", headers=api.auth)
    assert done.status_code == 200
    assert {p[0] for p in _plan(api, "survey_assignment_id")} == {State.CANCELLED}
    assert_refused(api.client.post("/v1/surveys/nope/complete", headers=api.auth), 404, "assignment_ref")
    too_many = api.client.post(
        "/v1/surveys", json={**body, "assignment_ref": "sv-2", "reminders": 11}, headers=api.auth
    )
    assert_refused(too_many, 422, "reminders")
