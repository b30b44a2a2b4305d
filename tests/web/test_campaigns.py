"""Campaigns through the API: a marketing lead creates, launches, watches and cancels; the scheduler fans out."""

from __future__ import annotations

from datetime import timedelta

from tests.web.conftest import Api, add_patient, assert_refused, drain


def _create(api: Api, **fields: object) -> dict[str, object]:
    body = {"name": "Spring classes", "template": "class_invite", "channels": ["push", "email"], **fields}
    response = api.client.post("/v1/campaigns", json=body, headers=api.auth)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_create_launch_fan_out_deliver_and_report(api: Api) -> None:
    for ref, locale in (("pt-en-1", "en"), ("pt-en-2", "en"), ("pt-es", "es")):
        add_patient(api, ref, email=f"{ref}@example.org", locale=locale)
    add_patient(api, "pt-nothing")  # a phone only: SMS marketing needs an opt-in she never gave
    draft = _create(api, audience={"locales": ["en"]}, channels=["email", "sms"])
    assert draft["state"] == "draft" and draft["queued"] == 0 and draft["audience"] == {"locales": ["en"]}
    cid = draft["campaign_id"]

    launched = api.client.post(f"/v1/campaigns/{cid}/launch", json={}, headers=api.auth)
    assert launched.status_code == 202, launched.text
    assert launched.json()["state"] == "scheduled"
    assert launched.json()["launch_at"] == "2026-03-02T18:00:00Z"
    assert api.app.launch_campaigns() == 2  # the scheduler's job
    drain(api.app)

    stats = api.client.get(f"/v1/campaigns/{cid}", headers=api.auth).json()
    assert stats["state"] == "launched"
    assert stats["audience_size"] == 3 and stats["queued"] == 2 and stats["excluded"] == {"no_consent": 1}
    assert stats["by_state"] == {"sent": 2}
    assert stats["accepted_by_channel"] == {"email": 2}
    assert len(api.email.sent) == 2 and api.sms.sent == []
    assert all("/v1/unsubscribe/" in m.body for m in api.email.sent), "every marketing email can unsubscribe"


def test_a_scheduled_launch_waits_and_cancel_stops_it(api: Api) -> None:
    add_patient(api, "pt-1", email="a@example.org")
    cid = _create(api)["campaign_id"]
    at = (api.app.clock.now() + timedelta(hours=2)).isoformat()
    ends = (api.app.clock.now() + timedelta(hours=6)).isoformat()
    body = api.client.post(f"/v1/campaigns/{cid}/launch", json={"launch_at": at, "ends_at": ends}, headers=api.auth)
    assert body.status_code == 202 and body.json()["ends_at"] == "2026-03-03T00:00:00Z"
    assert api.app.launch_campaigns() == 0
    cancelled = api.client.post(f"/v1/campaigns/{cid}/cancel", headers=api.auth)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    api.app.clock.advance(timedelta(hours=3))
    assert api.app.launch_campaigns() == 0
    again = api.client.post(f"/v1/campaigns/{cid}/launch", json={}, headers=api.auth)
    assert_refused(again, 409, "campaign_id")


def test_bad_requests_name_the_field(api: Api) -> None:
    def post(body: dict[str, object]) -> object:
        return api.client.post("/v1/campaigns", json=body, headers=api.auth)

    good = {"name": "x", "template": "news", "channels": ["push"]}
    assert_refused(post({**good, "template": "diagnosis_ppd"}), 422, "template")
    assert_refused(post({**good, "channels": []}), 422, "channels")
    assert_refused(post({**good, "channels": ["fax"]}), 422, "channels.0")
    assert_refused(post({**good, "audience": {"condition": "ppd"}}), 422, "audience.condition")
    assert_refused(post({**good, "audience": {"time_zones": ["Mars/Olympus"]}}), 422, "audience.time_zones.0")
    assert_refused(post({**good, "body": "Hi Maria, about your PPD"}), 422, "body")
    cid = _create(api)["campaign_id"]
    past = (api.app.clock.now() - timedelta(days=1)).isoformat()
    assert_refused(
        api.client.post(f"/v1/campaigns/{cid}/launch", json={"launch_at": past}, headers=api.auth), 422, "launch_at"
    )
    assert_refused(api.client.get("/v1/campaigns/4242", headers=api.auth), 404, "campaign_id")
    assert_refused(api.client.post("/v1/campaigns/4242/cancel", headers=api.auth), 404, "campaign_id")
    assert api.client.get(f"/v1/campaigns/{cid}").status_code == 401
