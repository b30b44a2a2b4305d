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
