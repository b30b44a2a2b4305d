"""API keys: required, stored only as a digest, revocable."""

from __future__ import annotations

from sqlalchemy import select

from tests.web.conftest import Api, assert_refused
from worker.db import session_scope
from worker.models_api import ApiClient
from worker.web.auth import authenticate, create_api_key, revoke_api_key

PATIENT = {"external_ref": "pt-1", "time_zone": "America/Chicago"}


def test_missing_and_wrong_keys_are_refused_and_change_nothing(api: Api) -> None:
    missing = api.client.post("/v1/patients", json=PATIENT)
    assert_refused(missing, 401, "Authorization")
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = api.key[:-4] + ("AAAA" if not api.key.endswith("AAAA") else "BBBB")
    assert_refused(
        api.client.post("/v1/patients", json=PATIENT, headers={"Authorization": f"Bearer {forged}"}),
        401,
        "Authorization",
    )
    assert_refused(
        api.client.get("/v1/notifications/1", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, "Authorization"
    )
    ok = api.client.post("/v1/patients", json=PATIENT, headers=api.auth)
    assert ok.status_code == 200 and ok.json()["patient_id"] == 1  # the refused ones wrote no row


def test_key_is_stored_as_a_digest_only(api: Api) -> None:
    with session_scope(api.app.engine) as session:
        [client] = session.scalars(select(ApiClient)).all()
        assert client.name == "care-platform"
        assert api.key not in (client.key_sha256, client.key_id) and len(client.key_sha256) == 64
        assert api.key.split("_")[1] == client.key_id


def test_revoked_key_stops_working(api: Api) -> None:
    other = create_api_key(api.app.engine, api.app.clock, "tool")
    assert authenticate(api.app.engine, other) is not None
    assert revoke_api_key(api.app.engine, api.app.clock, "tool") is True
    assert revoke_api_key(api.app.engine, api.app.clock, "tool") is False
    assert authenticate(api.app.engine, other) is None
    response = api.client.post("/v1/patients", json=PATIENT, headers={"Authorization": f"Bearer {other}"})
    assert_refused(response, 401, "Authorization")
    assert api.client.post("/v1/patients", json=PATIENT, headers=api.auth).status_code == 200
