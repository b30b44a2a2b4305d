"""Outbound-webhook endpoints through the API (scope ``webhooks``): the secret once, health, disable, enable,
remove, replay; refusals name the field; another scope is refused."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import create_patient
from tests.web.conftest import Api, assert_refused
from tests.webhook_receiver import running_receiver
from worker.outbound.endpoints import list_endpoints
from worker.web.auth import Scope, create_api_key

BASE = "/v1/webhook-endpoints"


@pytest.fixture
def admin(api: Api) -> dict[str, str]:
    """A key with the ``webhooks`` scope (never implied: granted by name)."""
    key = create_api_key(api.app.engine, api.app.clock, "ops", scopes=frozenset({Scope.WEBHOOKS}))
    return {"Authorization": f"Bearer {key}"}


def test_register_list_disable_enable_remove(api: Api, admin: dict[str, str]) -> None:
    created = api.client.post(
        BASE,
        json={"url": "https://platform.example.org/hooks", "events": ["notification.sent", "consent.changed"]},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["enabled"] is True and body["ordered"] is False
    endpoint_id = body["id"]
    listed = api.client.get(BASE, headers=admin).json()
    assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]
    assert body["secret"] not in api.client.get(f"{BASE}/{endpoint_id}", headers=admin).text
    off = api.client.post(f"{BASE}/{endpoint_id}/disable", headers=admin).json()
    assert off["enabled"] is False and off["disabled_reason"] == "operator"
    on = api.client.post(f"{BASE}/{endpoint_id}/enable", headers=admin).json()
    assert on["enabled"] is True and on["disabled_reason"] is None
    assert api.client.delete(f"{BASE}/{endpoint_id}", headers=admin).status_code == 204
    assert_refused(api.client.get(f"{BASE}/{endpoint_id}", headers=admin), 404, "path")


def test_bad_input_is_refused_naming_the_field(api: Api, admin: dict[str, str]) -> None:
    url = "https://platform.example.org/hooks"
    assert_refused(api.client.post(BASE, json={"url": url, "events": ["nope"]}, headers=admin), 422, "events")
    assert_refused(api.client.post(BASE, json={"url": "ftp://x", "events": ["*"]}, headers=admin), 422, "url")
    assert_refused(
        api.client.post(BASE, json={"url": url, "events": ["*"], "colour": "red"}, headers=admin), 422, "colour"
    )
    assert_refused(api.client.post(f"{BASE}/replay", json={"since": "yesterday"}, headers=admin), 422, "since")


def test_the_scope_is_never_implied(api: Api) -> None:
    # The default key holds every patient-facing scope, not this one.
    answer = api.client.get(BASE, headers=api.auth)
    assert answer.status_code == 403 and "webhooks" in answer.text


def test_replay_through_the_api_resends_with_the_same_id(api: Api, admin: dict[str, str]) -> None:
    with running_receiver() as receiver:
        created = api.client.post(BASE, json={"url": receiver.url, "events": ["consent.changed"]}, headers=admin)
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
        replayed = api.client.post(f"{BASE}/replay", json={"since": since}, headers=admin)
        assert replayed.json() == {"queued": 1}
        api.app.outbound.sender.run(view.id)
        ids = receiver.ids()
        assert len(ids) == 2 and ids[0] == ids[1]
