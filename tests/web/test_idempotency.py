"""Idempotency-Key on POST: replays get the first answer, a different body is refused, failures release the key."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from tests.web.conftest import Api, add_patient, assert_refused
from worker.clock import FrozenClock
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.models_api import IdempotencyRecord
from worker.web.auth import create_api_key
from worker.web.idempotency import Owner, _finish, request_fingerprint


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


def test_json_nested_too_deeply_for_the_parser_is_refused_not_a_crash(api: Api) -> None:
    deep = b"[" * 30_000 + b"]" * 30_000  # 60 KB: within the size limit, far past the parser's nesting limit
    for extra in ({"Idempotency-Key": "deep-1"}, {}):
        headers = {**api.auth, "Content-Type": "application/json", **extra}
        assert_refused(api.client.post("/v1/patients", content=deep, headers=headers), 400, "body")
    assert _count(api, IdempotencyRecord) == 0  # refused: the key is released for a corrected retry


def _in_progress(api: Api, key: str, body: dict[str, object], path: str = "/v1/patients") -> Owner:
    """A key whose request died mid-way: recorded as in progress, never finished."""
    with session_scope(api.app.engine) as session:
        record = IdempotencyRecord(
            client_id=1,
            key=key,
            method="POST",
            path=path,
            request_sha256=request_fingerprint("POST", path, b"", json.dumps(body).encode()),
            created_at=api.app.clock.now(),
        )
        session.add(record)
        session.flush()
        assert record.id is not None
        return Owner(record.id, record.created_at)


def test_a_key_left_in_progress_by_a_dead_request_is_taken_over(api: Api, clock: FrozenClock) -> None:
    body = {"external_ref": "a", "time_zone": "UTC"}
    headers = {**api.auth, "Idempotency-Key": "orphan"}
    dead = _in_progress(api, "orphan", body)
    assert_refused(api.client.post("/v1/patients", json=body, headers=headers), 409, "Idempotency-Key")
    clock.advance(seconds=api.app.settings.web.idempotency_in_progress_seconds - 1)
    assert_refused(api.client.post("/v1/patients", json=body, headers=headers), 409, "Idempotency-Key")
    clock.advance(seconds=2)  # past the in-progress timeout: the request that held the key is gone
    # Another request under the key is still refused: taking over is for the same request only.
    other = api.client.post("/v1/patients", json={**body, "external_ref": "b"}, headers=headers)
    assert_refused(other, 422, "Idempotency-Key")
    retried = api.client.post("/v1/patients", json=body, headers=headers)
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    replay = api.client.post("/v1/patients", json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true" and replay.json() == retried.json()
    # Should the old request wake up after all, it can neither overwrite the answer nor release the key.
    _finish(api.app.engine, dead, 200, b'{"stale": true}')
    _finish(api.app.engine, dead, 500, None)
    again = api.client.post("/v1/patients", json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == retried.json()
    assert _count(api, Patient) == 1 and _count(api, IdempotencyRecord) == 1


def test_keys_expire_after_their_lifetime(api: Api, clock: FrozenClock) -> None:
    add_patient(api, "pt-1")
    headers = {**api.auth, "Idempotency-Key": "daily-1"}
    first = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "m-1"}, headers=headers
    )
    assert first.status_code == 202
    clock.advance(hours=api.app.settings.web.idempotency_key_hours - 0.01)
    replay = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "m-1"}, headers=headers
    )
    assert replay.headers["idempotent-replayed"] == "true"
    clock.advance(hours=0.02)
    # A day on, the key is new again: another request under it runs (not refused as a reuse, nor replayed).
    later = api.client.post(
        "/v1/care-team-messages", json={"patient_ref": "pt-1", "message_id": "m-2"}, headers=headers
    )
    assert later.status_code == 202 and "idempotent-replayed" not in later.headers
    assert later.json()["notification_id"] != first.json()["notification_id"]
    assert _count(api, IdempotencyRecord) == 1
