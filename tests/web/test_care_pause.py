"""``/v1/patients/{ref}/pause``: set, change, read and lift a care pause; refusals name the field; the ledger
names the API client."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from tests.web.conftest import Api, add_patient, assert_refused
from worker.db import session_scope
from worker.models_consent import CarePauseEvent
from worker.web.auth import create_api_key

URL = "/v1/patients/pt-1/pause"


def _ledger(api: Api) -> list[tuple[bool, str | None, str, str]]:
    with session_scope(api.app.engine) as session:
        return [
            (e.paused, e.reason_code, e.source, e.actor)
            for e in session.scalars(select(CarePauseEvent).order_by(col(CarePauseEvent.id)))
        ]


def test_pause_read_change_and_lift(api: Api) -> None:
    add_patient(api, "pt-1", time_zone="America/Chicago")
    assert api.client.get(URL, headers=api.auth).json() == {
        "paused": False,
        "reason": None,
        "until": None,
        "hold_appointment_reminders": None,
        "since": None,
        "by": None,
        "changed": None,
    }
    body = {"reason": "nicu_stay", "until": "2026-12-01"}
    first = api.client.post(URL, json=body, headers={**api.auth, "Idempotency-Key": "pause-pt-1-a"})
    assert first.status_code == 200, first.text
    assert first.json() == {
        "paused": True,
        "reason": "nicu_stay",
        "until": "2026-12-01T06:00:00Z",  # the start of 1 December in Chicago
        "hold_appointment_reminders": False,
        "since": "2026-03-02T18:00:00Z",
        "by": "api:care-platform",
        "changed": True,
    }
    replay = api.client.post(URL, json=body, headers={**api.auth, "Idempotency-Key": "pause-pt-1-a"})
    assert replay.headers["idempotent-replayed"] == "true"
    again = api.client.post(URL, json=body, headers=api.auth)
    assert again.json()["changed"] is False, "the same pause again writes nothing"
    indefinite = api.client.post(
        URL, json={"reason": "infant_loss", "until": None, "hold_appointment_reminders": True}, headers=api.auth
    )
    assert indefinite.json()["until"] is None and indefinite.json()["hold_appointment_reminders"] is True
    shown = api.client.get(URL, headers=api.auth).json()
    assert shown["paused"] is True and shown["reason"] == "infant_loss"

    lifted = api.client.delete(URL, headers=api.auth)
    assert lifted.status_code == 200 and lifted.json()["paused"] is False and lifted.json()["changed"] is True
    assert api.client.delete(URL, headers=api.auth).json()["changed"] is False
    assert api.client.get(URL, headers=api.auth).json()["paused"] is False
    assert _ledger(api) == [
        (True, "nicu_stay", "api", "api:care-platform"),
        (True, "infant_loss", "api", "api:care-platform"),
        (False, None, "api", "api:care-platform"),
    ]


def test_refusals_name_the_field_and_write_nothing(api: Api) -> None:
    add_patient(api, "pt-1")
    cases = [
        ({"reason": "she is grieving", "until": None}, "reason"),  # never free text
        ({"until": None}, "reason"),
        ({"reason": "nicu_stay"}, "until"),  # an end, or an explicit null for "until lifted"
        ({"reason": "nicu_stay", "until": "2026-03-01"}, "until"),  # in the past
        ({"reason": "nicu_stay", "until": "2026-12-01T10:00:00"}, "until"),  # no offset
        ({"reason": "nicu_stay", "until": "next week"}, "until"),
        ({"reason": "nicu_stay", "until": None, "note": "x"}, "note"),
    ]
    for body, field in cases:
        response = api.client.post(URL, json=body, headers=api.auth)
        refusal = assert_refused(response, 422, field)
        assert "grieving" not in str(refusal)
    assert_refused(
        api.client.post("/v1/patients/nobody/pause", json={"reason": "nicu_stay", "until": None}, headers=api.auth),
        404,
        "external_ref",
    )
    assert_refused(api.client.delete("/v1/patients/nobody/pause", headers=api.auth), 404, "external_ref")
    assert _ledger(api) == []


def test_a_client_needs_the_preferences_scope_to_pause_and_read_to_look(api: Api) -> None:
    add_patient(api, "pt-1")
    reader = create_api_key(api.app.engine, api.app.clock, "dashboard", scopes=["read"])
    headers = {"Authorization": f"Bearer {reader}"}
    refused = api.client.post(URL, json={"reason": "patient_request", "until": None}, headers=headers)
    assert refused.status_code == 403 and "preferences" in refused.json()["message"]
    assert api.client.delete(URL, headers=headers).status_code == 403
    assert api.client.get(URL, headers=headers).status_code == 200
    assert _ledger(api) == []
