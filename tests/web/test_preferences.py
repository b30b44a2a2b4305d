"""A patient mutes through the platform: the switch is honoured at send time and written to the ledger."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import load
from tests.web.conftest import Api, add_patient, assert_refused, drain
from worker.db import session_scope
from worker.models_consent import ConsentEvent
from worker.states import State

MUTE_CARE_TEAM = {
    "changes": [
        {"category": "care_team_message", "channel": "push", "enabled": False},
        {"category": "care_team_message", "channel": "sms", "enabled": False},
    ]
}


def test_patient_mute_suppresses_even_what_is_already_queued(api: Api) -> None:
    add_patient(api, "pt-1")
    api.client.post("/v1/patients/pt-1/devices", json={"platform": "ios", "token": "tok"}, headers=api.auth)
    queued = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "m-1"}, headers=api.auth
    ).json()["notification_id"]

    muted = api.client.post("/v1/patients/pt-1/preferences", json=MUTE_CARE_TEAM, headers=api.auth)
    assert muted.status_code == 200, muted.text
    prefs = muted.json()["preferences"]
    assert prefs["care_team_message"] == {"push": False, "sms": False, "email": True, "inapp": True}
    assert api.client.get("/v1/patients/pt-1/preferences", headers=api.auth).json()["preferences"] == prefs

    drain(api.app)
    row = load(api.app, queued)
    assert row.state == State.SUPPRESSED and row.reason.startswith("muted by patient")
    assert api.push.sent == [] and api.sms.sent == []
    with session_scope(api.app.engine) as session:
        ledger = [(e.channel, e.granted, e.source, e.actor) for e in session.scalars(select(ConsentEvent))]
    assert ledger == [("push", False, "app", "api:care-platform"), ("sms", False, "app", "api:care-platform")]


def test_refused_changes_apply_nothing(api: Api) -> None:
    add_patient(api, "pt-2")
    before = api.client.get("/v1/patients/pt-2/preferences", headers=api.auth).json()
    required = {
        "changes": [
            {"category": "survey_reminder", "channel": "email", "enabled": False},
            {"category": "account_notice", "channel": "email", "enabled": False},
        ]
    }
    assert_refused(
        api.client.post("/v1/patients/pt-2/preferences", json=required, headers=api.auth), 422, "account_notice.email"
    )
    sms_marketing = {"changes": [{"category": "marketing", "channel": "sms", "enabled": True}]}
    refused = api.client.post("/v1/patients/pt-2/preferences", json=sms_marketing, headers=api.auth)
    assert_refused(refused, 422, "sms_consent_evidence")
    bad = {"changes": [{"category": "gossip", "channel": "sms", "enabled": True}]}
    assert_refused(
        api.client.post("/v1/patients/pt-2/preferences", json=bad, headers=api.auth), 422, "changes.0.category"
    )
    assert api.client.get("/v1/patients/pt-2/preferences", headers=api.auth).json() == before
    assert_refused(api.client.get("/v1/patients/nobody/preferences", headers=api.auth), 404, "external_ref")
    with session_scope(api.app.engine) as session:
        assert list(session.scalars(select(ConsentEvent))) == []


def test_sms_marketing_opt_in_with_evidence(api: Api) -> None:
    add_patient(api, "pt-3")
    body = {
        "changes": [{"category": "marketing", "channel": "sms", "enabled": True}],
        "sms_consent_evidence": "consent form v3 #8812",
        "via": "api",
    }
    response = api.client.post("/v1/patients/pt-3/preferences", json=body, headers=api.auth)
    assert response.status_code == 200 and response.json()["preferences"]["marketing"]["sms"] is True
