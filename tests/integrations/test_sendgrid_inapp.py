"""SendGrid v3 and the secure in-app endpoint: answers tables; unsubscribe headers; event signature."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import respx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from integrations.base import Outcome
from integrations.inapp import InAppProvider
from integrations.sendgrid import SendGridEmailProvider, verify_event_signature
from tests.integrations.conftest import make_message
from worker.categories import Channel
from worker.clock import FrozenClock

SG = "https://api.sendgrid.com/v3/mail/send"
INAPP = "https://secure-messaging.example/api/notices"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def sendgrid(client: httpx.Client, clock: FrozenClock) -> SendGridEmailProvider:
    return SendGridEmailProvider(
        client=client,
        clock=clock,
        api_key="SG.key",
        from_email="care@partum.example",
        unsubscribe_group_id=42,
        postal_address="Partum Health, 1 Main St, New York, NY",
    )


def _email(**kw: object):  # type: ignore[no-untyped-def]
    return make_message(Channel.EMAIL, address="patient@example.org", platform=None, **kw)


SG_ROWS = [
    ("202", 202, {"X-Message-Id": "sg-1"}, Outcome.ACCEPTED),
    ("429", 429, {"X-RateLimit-Reset": "1772474445"}, Outcome.RETRY),
    ("500", 500, {}, Outcome.RETRY),
    ("503", 503, {}, Outcome.RETRY),
    ("400", 400, {}, Outcome.FAILED),
    ("413", 413, {}, Outcome.FAILED),
    ("401", 401, {}, Outcome.CONFIG_ERROR),
    ("403", 403, {}, Outcome.CONFIG_ERROR),
]


@pytest.mark.parametrize(("label", "status", "headers", "outcome"), SG_ROWS, ids=[r[0] for r in SG_ROWS])
@respx.mock
def test_every_sendgrid_answer_maps_to_one_outcome(sendgrid, clock, label, status, headers, outcome) -> None:  # type: ignore[no-untyped-def]
    body = {"errors": [{"message": "x", "field": None}]} if status >= 400 else None
    respx.post(SG).respond(status, json=body, headers=headers)
    result = sendgrid.send(message=_email())
    assert result.outcome is outcome, label
    if status == 429:
        assert result.retry_after == pytest.approx(1772474445 - clock.now().timestamp())


@respx.mock
def test_marketing_email_has_one_click_unsubscribe_group_and_postal_address(sendgrid) -> None:  # type: ignore[no-untyped-def]
    route = respx.post(SG).respond(202)
    url = "https://notify.example/u/abc.def"
    sendgrid.send(message=_email(category="marketing", promotional=True, data={"unsubscribe_url": url}))
    body = json.loads(route.calls.last.request.content)
    assert body["headers"] == {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert body["asm"] == {"group_id": 42}
    assert "1 Main St" in body["content"][0]["value"]
    assert body["custom_args"] == {"notification_id": "7"}


def test_marketing_email_without_unsubscribe_url_is_refused(sendgrid) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unsubscribe"):
        sendgrid.payload(_email(category="marketing", promotional=True))


def test_event_webhook_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    payload = b'[{"event":"delivered","notification_id":"7"}]'
    timestamp = "1772474445"
    signature = base64.b64encode(key.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode()
    assert verify_event_signature(public, payload, signature, timestamp)
    assert not verify_event_signature(public, payload + b" ", signature, timestamp)
    assert not verify_event_signature(public, payload, signature, "1772474446")
    assert not verify_event_signature(public, payload, None, timestamp)
    assert not verify_event_signature(public, payload, "bm90IGEgc2lnbmF0dXJl", timestamp)


INAPP_ROWS = [
    ("201", 201, Outcome.ACCEPTED),
    ("200", 200, Outcome.ACCEPTED),
    ("400", 400, Outcome.FAILED),
    ("404", 404, Outcome.FAILED),
    ("401", 401, Outcome.CONFIG_ERROR),
    ("403", 403, Outcome.CONFIG_ERROR),
    ("429", 429, Outcome.RETRY),
    ("500", 500, Outcome.RETRY),
    ("503", 503, Outcome.RETRY),
]


@pytest.mark.parametrize(("label", "status", "outcome"), INAPP_ROWS, ids=[r[0] for r in INAPP_ROWS])
@respx.mock
def test_every_inapp_answer_maps_to_one_outcome(client, clock, label, status, outcome) -> None:  # type: ignore[no-untyped-def]
    provider = InAppProvider(client=client, clock=clock, url=INAPP, token="bearer-x")
    route = respx.post(INAPP).respond(
        status, json={"id": "m1"} if status < 300 else {"error": "x"}, headers={"Retry-After": "3"}
    )
    result = provider.send(message=make_message(Channel.INAPP, address="pt-ref-1", platform=None))
    assert result.outcome is outcome, label
    sent = json.loads(route.calls.last.request.content)
    assert sent == {
        "patient_ref": "pt-ref-1",
        "category": "care_team_message",
        "text": "You have a new message from your care team.",
        "idempotency_key": "test:7:device:1",
    }
    assert route.calls.last.request.headers["authorization"] == "Bearer bearer-x"
    if status == 429:
        assert result.retry_after == 3.0


@respx.mock
def test_inapp_read_timeout_is_retried_because_the_endpoint_dedupes(client, clock) -> None:  # type: ignore[no-untyped-def]
    provider = InAppProvider(client=client, clock=clock, url=INAPP, token="t")
    respx.post(INAPP).mock(side_effect=httpx.ReadTimeout("slow"))
    assert provider.send(message=make_message(Channel.INAPP, address="pt")).outcome is Outcome.RETRY
