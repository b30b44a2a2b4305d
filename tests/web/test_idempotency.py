"""Idempotency-Key on POST: replays get the first answer, a different body is refused, failures release the key."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from tests.web.conftest import Api, add_patient, assert_refused
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.models_api import IdempotencyRecord
from worker.web.auth import create_api_key
from worker.web.idempotency import request_fingerprint


def _count(api: Api, model: type) -> int:
    with session_scope(api.app.engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_replay_returns_the_first_answer_without_a_second_effect(api: Api) -> None:
    add_patient(api, "pt-1")
    headers = {**api.auth, "Idempotency-Key": "k-1"}
    body = {"patient_ref": "pt-1", "message_id": "m-1"}
    first = api.client.post("/v1/care-team-messages", json=body, headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # Same JSON, other key order and spacing: the same request.
    raw = json.dumps({"message_id": "m-1", "patient_ref": "pt-1"}, indent=2).encode()
    replay = api.client.post(
        "/v1/care-team-messages", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert replay.status_code == 202 and replay.json() == first.json() == {"notification_id": 1, "created": True}
    assert replay.headers["idempotent-replayed"] == "true"
    assert _count(api, Notification) == 1


def test_same_key_with_another_body_or_path_is_refused(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "k-2"}
    assert api.client.post("/v1/patients", json={"external_ref": "a", "time_zone": "UTC"}, headers=headers).is_success
    other = api.client.post("/v1/patients", json={"external_ref": "b", "time_zone": "UTC"}, headers=headers)
    assert_refused(other, 422, "Idempotency-Key")
    elsewhere = api.client.post("/v1/patients/a/devices", json={"platform": "ios", "token": "t"}, headers=headers)
    assert_refused(elsewhere, 422, "Idempotency-Key")
    assert _count(api, Patient) == 1


def test_keys_are_per_client(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "shared"}
    api.client.post("/v1/patients", json={"external_ref": "a", "time_zone": "UTC"}, headers=headers)
    other = {
        "Authorization": f"Bearer {create_api_key(api.app.engine, api.app.clock, 'b')}",
        "Idempotency-Key": "shared",
    }
    response = api.client.post("/v1/patients", json={"external_ref": "b", "time_zone": "UTC"}, headers=other)
    assert response.status_code == 200 and "idempotent-replayed" not in response.headers
    assert _count(api, Patient) == 2


def test_a_refused_request_releases_its_key_for_the_corrected_retry(api: Api) -> None:
    headers = {**api.auth, "Idempotency-Key": "k-3"}
    bad = api.client.post("/v1/patients", json={"external_ref": "a", "time_zone": "Mars/Base"}, headers=headers)
    assert_refused(bad, 422, "time_zone")
    assert _count(api, IdempotencyRecord) == 0
    good = api.client.post("/v1/patients", json={"external_ref": "a", "time_zone": "UTC"}, headers=headers)
    assert good.status_code == 200 and "idempotent-replayed" not in good.headers


def test_a_key_still_in_progress_is_409_and_bad_keys_are_422(api: Api) -> None:
    body = {"external_ref": "a", "time_zone": "UTC"}
    with session_scope(api.app.engine) as session:
        session.add(
            IdempotencyRecord(
                client_id=1,
                key="busy",
                method="POST",
                path="/v1/patients",
                request_sha256=request_fingerprint("POST", "/v1/patients", b"", json.dumps(body).encode()),
                created_at=api.app.clock.now(),
            )
        )
    busy = api.client.post("/v1/patients", json=body, headers={**api.auth, "Idempotency-Key": "busy"})
    assert_refused(busy, 409, "Idempotency-Key")
    for key in ("", "x" * 201, "has space"):
        bad = api.client.post("/v1/patients", json=body, headers={**api.auth, "Idempotency-Key": key})
        assert_refused(bad, 422, "Idempotency-Key")
    assert _count(api, Patient) == 0


def test_unauthenticated_request_with_a_key_is_401_and_stores_nothing(api: Api) -> None:
    response = api.client.post(
        "/v1/patients", json={"external_ref": "a", "time_zone": "UTC"}, headers={"Idempotency-Key": "k"}
    )
    assert_refused(response, 401, "Authorization")
    assert _count(api, IdempotencyRecord) == 0
