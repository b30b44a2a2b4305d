"""The real web app on the embedded stack (SQLite + in-memory broker) with scripted providers."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from integrations.fake import ScriptedProvider
from tests.conftest import fake_providers
from worker.bootstrap import App
from worker.categories import Channel
from worker.web.app import create_web_app
from worker.web.auth import create_api_key

#: The Twilio auth token and SendGrid Event Webhook key pair the test app verifies callbacks with.
TWILIO_TOKEN = "test-twilio-auth-token-0123456789"
SIGNING_KEY = "test-signing-key-for-unsubscribe-links"
TWILIO_STATUS_URL = "http://testserver/webhooks/twilio/status"
TWILIO_INBOUND_URL = "http://testserver/webhooks/twilio/sms"
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
).decode()


@dataclass
class Api:
    app: App
    client: TestClient
    key: str
    push: ScriptedProvider
    sms: ScriptedProvider
    email: ScriptedProvider

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def api(make_app) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    push = ScriptedProvider(name="fake-push", channel=Channel.PUSH)
    sms = ScriptedProvider(name="fake-sms", channel=Channel.SMS)
    email = ScriptedProvider(name="fake-email", channel=Channel.EMAIL)
    app = make_app(
        providers=fake_providers(push=push, sms=sms, email=email),
        twilio_auth_token=TWILIO_TOKEN,
        signing_key=SIGNING_KEY,
        provider={
            "sendgrid_event_public_key": SENDGRID_PUBLIC,
            # The URLs Twilio signs are pinned by settings, never rebuilt from the request.
            "twilio_status_callback_url": TWILIO_STATUS_URL,
            "twilio_inbound_url": TWILIO_INBOUND_URL,
        },
    )
    key = create_api_key(app.engine, app.clock, "care-platform")
    with TestClient(create_web_app(app)) as client:
        yield Api(app=app, client=client, key=key, push=push, sms=sms, email=email)


def assert_refused(response, status: int, field: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Every refusal is JSON naming the field at fault."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field, body
    assert body["message"] and body["error"]
    return body  # type: ignore[no-any-return]


def drain(app: App) -> None:
    """Let a real dramatiq worker empty the in-memory queue."""
    from worker.runtime import start_worker, stop_worker

    worker = start_worker(app, threads=1)
    try:
        app.broker.join(app.settings.queue_name, timeout=10_000)
        worker.join()
    finally:
        stop_worker(app, worker)


def add_patient(api: Api, ref: str, **fields: object) -> int:
    body = {"external_ref": ref, "time_zone": "America/New_York", "phone": "+12125550123", **fields}
    response = api.client.post("/v1/patients", json=body, headers=api.auth)
    assert response.status_code == 200, response.text
    return int(response.json()["patient_id"])
