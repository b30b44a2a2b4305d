"""Patients and devices through the API: upserts, and bad input refused whole with the field named."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.web.conftest import Api, assert_refused
from worker.db import session_scope
from worker.models import Device, Patient


def _count(api: Api, model: type) -> int:
    with session_scope(api.app.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_patient_upsert_creates_then_updates(api: Api) -> None:
    body = {"external_ref": "pt-7", "time_zone": "America/Chicago", "phone": "(312) 555-0142", "us_state": "il"}
    first = api.client.post("/v1/patients", json=body, headers=api.auth)
    assert first.status_code == 200 and first.json() == {"patient_id": 1, "external_ref": "pt-7"}
    second = api.client.post("/v1/patients", json={**body, "locale": "es"}, headers=api.auth)
    assert second.json()["patient_id"] == 1
    with session_scope(api.app.engine) as session:
        patient = session.get(Patient, 1)
        assert patient is not None
        assert (patient.locale, patient.phone_e164, patient.us_state) == ("es", "+13125550142", "IL")


def test_bad_patient_fields_are_named_never_echoed_and_nothing_is_written(api: Api) -> None:
    base = {"external_ref": "pt-8", "time_zone": "America/Chicago"}
    cases = [
        ({**base, "time_zone": "Mars/Olympus_Mons"}, "time_zone"),  # passes the schema, unknown to tzdata
        ({**base, "phone": "555 0000"}, "phone"),
        ({**base, "locale": "fr"}, "locale"),
        ({**base, "email": "not-an-address"}, "email"),
        ({**base, "diagnosis": "hemorrhage-risk-9"}, "diagnosis"),  # unknown fields are refused, not ignored
        ({"time_zone": "America/Chicago"}, "external_ref"),
    ]
    for body, field in cases:
        refused = assert_refused(api.client.post("/v1/patients", json=body, headers=api.auth), 422, field)
        for value in body.values():
            if value not in ("America/Chicago", "pt-8"):
                assert str(value) not in str(refused), (field, refused)
    for content_type in ("application/json", "text/plain"):
        headers = {**api.auth, "Content-Type": content_type}
        assert_refused(api.client.post("/v1/patients", content=b"{not json", headers=headers), 422, "body")
    assert _count(api, Patient) == 0


def test_device_registration(api: Api) -> None:
    api.client.post("/v1/patients", json={"external_ref": "pt-9", "time_zone": "UTC"}, headers=api.auth)
    ok = api.client.post("/v1/patients/pt-9/devices", json={"platform": "ios", "token": "abc123"}, headers=api.auth)
    assert ok.status_code == 200 and ok.json() == {"device_id": 1, "patient_id": 1}
    unknown = api.client.post("/v1/patients/nobody/devices", json={"platform": "ios", "token": "t"}, headers=api.auth)
    assert_refused(unknown, 404, "external_ref")
    bad = api.client.post("/v1/patients/pt-9/devices", json={"platform": "nokia", "token": "t"}, headers=api.auth)
    assert_refused(bad, 422, "platform")
    assert _count(api, Device) == 1


def test_erasure_deletes_the_patient_and_cancels_queued_work(api: Api) -> None:
    api.client.post("/v1/patients", json={"external_ref": "pt-child", "time_zone": "UTC"}, headers=api.auth)
    api.client.post("/v1/care-team-messages", json={"patient_ref": "pt-child", "message_id": "m"}, headers=api.auth)
    erased = api.client.post("/v1/patients/pt-child/erase", json={"reason": "under_13"}, headers=api.auth)
    assert erased.status_code == 200 and erased.json() == {"erased": True, "cancelled_notifications": 1}
    assert _count(api, Patient) == 0
    assert_refused(
        api.client.post("/v1/patients/pt-child/erase", json={"reason": "under_13"}, headers=api.auth),
        404,
        "external_ref",
    )
    bad = api.client.post("/v1/patients/x/erase", json={"reason": "she has postpartum depression"}, headers=api.auth)
    assert "depression" not in assert_refused(bad, 422, "reason")["message"]  # type: ignore[operator]


def test_only_canonical_iana_zones_are_accepted(api: Api) -> None:
    # tzdata ships these as files too, but none is the zone of a place: the machine's own zone, a placeholder,
    # and the posix/ and right/ (leap-second) copies of the tree.
    for zone in ("localtime", "Factory", "posixrules", "right/America/Chicago", "posix/America/Chicago"):
        body = {"external_ref": "pt-tz", "time_zone": zone}
        assert_refused(api.client.post("/v1/patients", json=body, headers=api.auth), 422, "time_zone")
    campaign = {"name": "x", "template": "news", "channels": ["push"], "audience": {"time_zones": ["localtime"]}}
    assert_refused(api.client.post("/v1/campaigns", json=campaign, headers=api.auth), 422, "audience.time_zones.0")
    for zone in ("America/Chicago", "America/Puerto_Rico", "Pacific/Honolulu", "UTC"):
        body = {"external_ref": f"pt-{zone}", "time_zone": zone}
        assert api.client.post("/v1/patients", json=body, headers=api.auth).status_code == 200, zone
    assert _count(api, Patient) == 4


def test_only_textable_numbers_of_the_allowed_regions_are_accepted(api: Api) -> None:
    refused = [
        "+1 900 555 0123",  # premium rate: the patient's "phone" would bill whoever texts it
        "+1 800 555 0123",  # toll free: a business line
        "+1 500 555 0123",  # personal communication service number
        "+44 7911 123456",  # a UK mobile: the platform is US-only
        "+1 416 555 0123",  # Canada shares +1 but is not the US
        "+44 20 7946 0958",  # a UK landline
    ]
    for phone in refused:
        body = {"external_ref": "pt-ph", "time_zone": "UTC", "phone": phone}
        answer = assert_refused(api.client.post("/v1/patients", json=body, headers=api.auth), 422, "phone")
        assert phone.replace(" ", "")[-7:] not in str(answer)
    ok = api.client.post(
        "/v1/patients", json={"external_ref": "pt-ph", "time_zone": "UTC", "phone": "312-555-0142"}, headers=api.auth
    )
    assert ok.status_code == 200
    assert _count(api, Patient) == 1


def test_phone_regions_are_a_setting(make_app) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from worker.web.app import create_web_app
    from worker.web.auth import create_api_key

    app = make_app(patients={"phone_regions": ["US", "PR"]})
    auth = {"Authorization": f"Bearer {create_api_key(app.engine, app.clock, 'care-platform')}"}
    with TestClient(create_web_app(app)) as client:
        for ref, phone, status in (("pr", "+1 787 555 0123", 200), ("ca", "+1 416 555 0123", 422)):
            body = {"external_ref": ref, "time_zone": "America/Puerto_Rico", "phone": phone}
            assert client.post("/v1/patients", json=body, headers=auth).status_code == status, phone


def test_email_addresses_need_a_real_domain(api: Api) -> None:
    for email in (
        "a@b",
        "pt@localhost",
        "pt@example.",
        "pt@.org",
        "pt..x@example.org",
        ".pt@example.org",
        "pt@exa_mple.org",
        "pt@-example.org",
        "pt@1.2.3.4",
        "pt@example.c",
        '"p t"@example.org',
    ):
        body = {"external_ref": "pt-em", "time_zone": "UTC", "email": email}
        answer = assert_refused(api.client.post("/v1/patients", json=body, headers=api.auth), 422, "email")
        assert email not in str(answer)
    for i, email in enumerate(("pt@example.org", "first.last+tag@mail.example.co.uk", "josé@exämple.de")):
        body = {"external_ref": f"pt-em-{i}", "time_zone": "UTC", "email": email}
        assert api.client.post("/v1/patients", json=body, headers=api.auth).status_code == 200, email
