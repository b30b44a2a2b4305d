"""Care-team triggers through the API, and the status of what happened to them."""

from __future__ import annotations

from sqlalchemy import select

from tests.conftest import load
from tests.web.conftest import Api, add_patient, assert_refused, drain
from worker.db import session_scope
from worker.models import Notification
from worker.web.auth import add_api_key, create_api_key


def test_care_team_message_is_sent_and_its_status_tells_the_story(api: Api) -> None:
    add_patient(api, "pt-1")
    api.client.post("/v1/patients/pt-1/devices", json={"platform": "ios", "token": "tok-1"}, headers=api.auth)
    response = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "msg-123"}, headers=api.auth
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"notification_id": 1, "created": True}
    drain(api.app)
    [pushed] = api.push.sent
    assert pushed.body == "You have a new message from your care team." and api.sms.sent == []

    status = api.client.get("/v1/notifications/1", headers=api.auth)
    assert status.status_code == 200
    report = status.json()
    assert report["state"] == "sent" and report["category"] == "care_team_message"
    assert [h["to"] for h in report["history"]] == ["pending", "sending", "sent"]
    assert [(c["provider"], c["outcome"], c["channel"]) for c in report["provider_calls"]] == [
        ("fake-push", "accepted", "push")
    ]


def test_no_device_falls_back_to_sms(api: Api) -> None:
    add_patient(api, "pt-2")
    api.client.post("/v1/care-team-messages", json={"patient_ref": "pt-2", "message_id": "m"}, headers=api.auth)
    drain(api.app)
    assert api.push.sent == [] and len(api.sms.sent) == 1


def test_the_same_message_never_notifies_twice_whichever_client_or_key_sends_it(api: Api) -> None:
    add_patient(api, "pt-3")
    body = {"patient_ref": "pt-3", "message_id": "msg-9"}
    first = api.client.post("/v1/care-team-messages", json=body, headers=api.auth).json()
    expected = {"notification_id": first["notification_id"], "created": False}
    assert first["created"] is True
    assert api.client.post("/v1/care-team-messages", json=body, headers=api.auth).json() == expected
    rotated = add_api_key(api.app.engine, api.app.clock, "care-platform")  # the same client, a new key
    other = create_api_key(api.app.engine, api.app.clock, "other-tool", scopes="notify")  # another client
    for key in (rotated, other):
        again = api.client.post("/v1/care-team-messages", json=body, headers={"Authorization": f"Bearer {key}"})
        assert again.status_code == 202 and again.json() == expected, again.text
    assert load(api.app, first["notification_id"]).context == {"message_ref": "msg-9"}
    with session_scope(api.app.engine) as session:
        assert len(session.scalars(select(Notification)).all()) == 1


def test_the_same_message_id_for_another_patient_is_a_conflict(api: Api) -> None:
    add_patient(api, "pt-a")
    add_patient(api, "pt-b")
    first = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-a", "message_id": "msg-1"}, headers=api.auth
    )
    assert first.status_code == 202 and first.json()["created"] is True
    clash = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-b", "message_id": "msg-1"}, headers=api.auth
    )
    body = assert_refused(clash, 409, "message_id")
    assert "notification_id" not in body and "pt-a" not in str(body), "nothing about the first patient leaks"
    with session_scope(api.app.engine) as session:
        assert len(session.scalars(select(Notification)).all()) == 1


def test_refusals_name_the_field(api: Api) -> None:
    add_patient(api, "pt-4")
    cases = [
        ({"patient_ref": "nobody", "message_id": "m"}, 404, "patient_ref"),
        ({"patient_ref": "pt-4"}, 422, "message_id"),
        # The message text must never reach us: a field for it does not exist.
        ({"patient_ref": "pt-4", "message_id": "m", "text": "How is the bleeding?"}, 422, "text"),
        ({"patient_ref": "pt-4", "message_id": "m", "channels": ["fax"]}, 422, "channels.0"),
        ({"patient_ref": "pt-4", "message_id": "m", "channels": []}, 422, "channels"),
    ]
    for body, status, field in cases:
        refused = assert_refused(api.client.post("/v1/care-team-messages", json=body, headers=api.auth), status, field)
        assert "bleeding" not in str(refused)
    assert_refused(api.client.get("/v1/notifications/99", headers=api.auth), 404, "notification_id")
    assert_refused(api.client.get("/v1/notifications/0", headers=api.auth), 422, "notification_id")
    assert_refused(api.client.get(f"/v1/notifications/{2**64}", headers=api.auth), 422, "notification_id")
    assert_refused(api.client.get("/v1/notifications/abc", headers=api.auth), 422, "notification_id")
    assert_refused(api.client.get("/v1/nothing-here", headers=api.auth), 404, "path")
    assert_refused(api.client.delete("/v1/care-team-messages", headers=api.auth), 405, "method")
    assert api.client.get("/v1/notifications/1", headers=api.auth).status_code == 404  # nothing was created
