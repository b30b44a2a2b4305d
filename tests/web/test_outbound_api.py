"""Outbound-webhook endpoints through the API (scope ``webhooks``): the secret once, health, disable, enable,
remove, replay; refusals name the field; another scope is refused."""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import create_patient
from tests.web.conftest import Api, assert_refused
from tests.webhook_receiver import running_receiver
from worker.outbound.endpoints import list_endpoints
from worker.web.auth import Scope, create_api_key

BASE = "/v1/webhook-endpoints"


def test_register_list_disable_enable_remove(api: Api) -> None:
    created = api.client.post(
        BASE,
        json={"url": "https://platform.example.org/hooks", "events": ["notification.sent", "consent.changed"]},
        headers=api.auth,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["enabled"] is True and body["ordered"] is False
    endpoint_id = body["id"]
    listed = api.client.get(BASE, headers=api.auth).json()
    assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]
    assert body["secret"] not in api.client.get(f"{BASE}/{endpoint_id}", headers=api.auth).text
    off = api.client.post(f"{BASE}/{endpoint_id}/disable", headers=api.auth).json()
    assert off["enabled"] is False and off["disabled_reason"] == "operator"
    on = api.client.post(f"{BASE}/{endpoint_id}/enable", headers=api.auth).json()
    assert on["enabled"] is True and on["disabled_reason"] is None
    assert api.client.delete(f"{BASE}/{endpoint_id}", headers=api.auth).status_code == 204
    assert_refused(api.client.get(f"{BASE}/{endpoint_id}", headers=api.auth), 404, "path")


def test_bad_input_is_refused_naming_the_field(api: Api) -> None:
    url = "https://platform.example.org/hooks"
    assert_refused(api.client.post(BASE, json={"url": url, "events": ["nope"]}, headers=api.auth), 422, "events")
    assert_refused(api.client.post(BASE, json={"url": "ftp://x", "events": ["*"]}, headers=api.auth), 422, "url")
    assert_refused(
        api.client.post(BASE, json={"url": url, "events": ["*"], "colour": "red"}, headers=api.auth), 422, "colour"
    )
    assert_refused(api.client.post(f"{BASE}/replay", json={"since": "yesterday"}, headers=api.auth), 422, "since")


def test_another_scope_is_refused(api: Api) -> None:
    key = create_api_key(api.app.engine, api.app.clock, "notifier-only", scopes=frozenset({Scope.NOTIFY}))
    answer = api.client.get(BASE, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 403 and "webhooks" in answer.text


def test_replay_through_the_api_resends_with_the_same_id(api: Api) -> None:
    with running_receiver() as receiver:
        created = api.client.post(BASE, json={"url": receiver.url, "events": ["consent.changed"]}, headers=api.auth)
        receiver.secret = created.json()["secret"]
        create_patient(api.app, ref="pt-r")
        changed = api.client.post(
            "/v1/patients/pt-r/preferences",
            json={"changes": [{"category": "care_team_message", "channel": "email", "enabled": False}]},
            headers=api.auth,
        )
        assert changed.status_code == 200, changed.text
        assert api.app.outbound is not None
        api.app.dispatch_webhooks()
        [view] = list_endpoints(api.app.engine)
        api.app.outbound.sender.run(view.id)
        since = (api.app.clock.now() - timedelta(minutes=5)).isoformat()
        replayed = api.client.post(f"{BASE}/replay", json={"since": since}, headers=api.auth)
        assert replayed.json() == {"queued": 1}
        api.app.outbound.sender.run(view.id)
        ids = receiver.ids()
        assert len(ids) == 2 and ids[0] == ids[1]
