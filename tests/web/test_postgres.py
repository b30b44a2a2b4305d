"""The API on the production database: concurrent duplicates never do the work twice."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from integrations.twilio import twilio_signature
from tests.conftest import create_patient
from tests.web.conftest import SENDGRID_KEY, SENDGRID_PUBLIC, TWILIO_STATUS_URL, TWILIO_TOKEN
from worker.clock import FrozenClock
from worker.db import session_scope
from worker.models import Notification, Patient
from worker.models_api import IdempotencyRecord, WebhookReceipt
from worker.web.app import create_web_app
from worker.web.auth import create_api_key
from worker.web.idempotency import request_fingerprint

pytestmark = pytest.mark.postgres


def _together(call: Callable[[], Response], times: int = 8) -> list[Response]:
    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(lambda _: call(), range(times)))


def _count(engine, model: type) -> int:  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_concurrent_duplicates_on_postgres(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url)
    auth = {"Authorization": f"Bearer {create_api_key(app.engine, app.clock, 'care-platform')}"}
    create_patient(app, ref="pt-1")
    with TestClient(create_web_app(app)) as client:
        body = {"patient_ref": "pt-1", "message_id": "m-1"}
        keyed = _together(
            lambda: client.post("/v1/care-team-messages", json=body, headers={**auth, "Idempotency-Key": "k-1"})
        )
        assert {r.status_code for r in keyed} <= {202, 409}, [r.text for r in keyed]
        assert {r.text for r in keyed if r.status_code == 202} == {'{"notification_id":1,"created":true}'}
        assert all(r.json()["field"] == "Idempotency-Key" for r in keyed if r.status_code == 409)

        patient = {"external_ref": "pt-new", "time_zone": "UTC"}
        unkeyed = _together(lambda: client.post("/v1/patients", json=patient, headers=auth))
        # Without a key a lost race is a 409 naming a retry, never a 500 and never a second row.
        assert {r.status_code for r in unkeyed} <= {200, 409}, [r.text for r in unkeyed]
        assert 200 in {r.status_code for r in unkeyed}
    assert _count(app.engine, Notification) == 1
    assert _count(app.engine, Patient) == 2


def test_odd_but_signed_callbacks_never_reach_postgres_as_errors(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    # PostgreSQL refuses what SQLite takes (NUL in text, integers past BIGINT): before, each was a 500.
    app = make_app(
        database_url=pg_url,
        twilio_auth_token=TWILIO_TOKEN,
        provider={"sendgrid_event_public_key": SENDGRID_PUBLIC, "twilio_status_callback_url": TWILIO_STATUS_URL},
    )
    events = [
        {"event": "delivered", "notification_id": str(2**63), "sg_event_id": "ev-big"},
        {"event": "delivered", "notification_id": 2**64, "sg_event_id": "ev-bigger"},
        {"event": "delivered", "notification_id": "²", "sg_event_id": "ev-sup"},
        {"event": "open", "sg_event_id": "nul\x00byte"},
        {"event": "open", "sg_event_id": "x" * 500},
    ]
    body = json.dumps(events).encode()
    ts = str(int(app.clock.now().timestamp()))
    signature = base64.b64encode(SENDGRID_KEY.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
    headers = {"X-Twilio-Email-Event-Webhook-Signature": signature, "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    with TestClient(create_web_app(app)) as client:
        first = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
        assert first.status_code == 200 and first.json() == {"result": {"ignored": 5}}, first.text
        assert client.post("/webhooks/sendgrid/events", content=body, headers=headers).json() == {
            "result": {"duplicate": 5}
        }
        form = {"MessageSid": "SM\x00", "MessageStatus": "delivered"}
        twilio = client.post(
            "/webhooks/twilio/status",
            content=urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, TWILIO_STATUS_URL, form),
            },
        )
        assert twilio.status_code == 400 and twilio.json()["field"] == "MessageSid"
    assert _count(app.engine, WebhookReceipt) == 5


def test_a_stale_key_is_taken_over_once_on_postgres(make_app, pg_url: str, clock: FrozenClock) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url)
    auth = {"Authorization": f"Bearer {create_api_key(app.engine, app.clock, 'care-platform')}"}
    body = {"external_ref": "pt-1", "time_zone": "UTC"}
    with session_scope(app.engine) as session:  # a request that died holding the key
        session.add(
            IdempotencyRecord(
                client_id=1,
                key="k-dead",
                method="POST",
                path="/v1/patients",
                request_sha256=request_fingerprint("POST", "/v1/patients", b"", json.dumps(body).encode()),
                created_at=clock.now(),
            )
        )
    clock.advance(seconds=app.settings.web.idempotency_in_progress_seconds + 1)
    with TestClient(create_web_app(app)) as client:
        answers = _together(
            lambda: client.post("/v1/patients", json=body, headers={**auth, "Idempotency-Key": "k-dead"})
        )
    ran = [r for r in answers if r.status_code == 200 and "idempotent-replayed" not in r.headers]
    assert len(ran) == 1, [(r.status_code, r.text) for r in answers]  # one took the key over; the rest waited
    assert all(r.status_code == 409 or r.headers.get("idempotent-replayed") == "true" for r in answers if r not in ran)
    assert _count(app.engine, IdempotencyRecord) == 1 and _count(app.engine, Patient) == 1
