"""Keys generated per test run (never committed), and a message factory."""

from __future__ import annotations

import json

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from integrations.base import OutboundMessage
from worker.categories import Channel


@pytest.fixture(scope="session")
def service_account_json() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "carenotify-test",
            "private_key_id": "kid-1",
            "private_key": pem,
            "client_email": "push@carenotify-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


@pytest.fixture(scope="session")
def ec_private_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client() as c:
        yield c  # type: ignore[misc]


def make_message(channel: Channel = Channel.PUSH, **kw: object) -> OutboundMessage:
    defaults: dict[str, object] = {
        "notification_id": 7,
        "idempotency_key": "test:7:device:1",
        "channel": channel,
        "category": "care_team_message",
        "address": "device-token-abc",
        "platform": "android",
        "title": "New message",
        "body": "You have a new message from your care team.",
        "data": {"notification_id": "7", "category": "care_team_message"},
    }
    defaults.update(kw)
    return OutboundMessage(**defaults)  # type: ignore[arg-type]
