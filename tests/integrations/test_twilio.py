"""Twilio SMS: answers table (error codes from PROVIDERS.md) and the webhook signature."""

from __future__ import annotations

import base64
import hashlib
import hmac

import httpx
import pytest
import respx

from integrations.base import Outcome
from integrations.twilio import ERROR_CODES, TwilioSmsProvider, twilio_signature, verify_twilio_signature
from tests.integrations.conftest import make_message
from worker.categories import Channel
from worker.clock import FrozenClock

URL = "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"


def _error(code: int, status: int) -> dict:
    return {
        "code": code,
        "message": "error",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


ROWS = [
    ("201 accepted", 201, {"sid": "SM123", "status": "queued"}, Outcome.ACCEPTED),
    ("21610 STOP", 400, _error(21610, 400), Outcome.OPTED_OUT),
    ("21211 invalid To", 400, _error(21211, 400), Outcome.FAILED),
    ("21614 not mobile", 400, _error(21614, 400), Outcome.FAILED),
    ("20429 too many", 429, _error(20429, 429), Outcome.RETRY),
    ("HTTP 429", 429, {}, Outcome.RETRY),
    ("30003 unreachable", 400, _error(30003, 400), Outcome.RETRY),
    ("30004 blocked", 400, _error(30004, 400), Outcome.FAILED),
    ("30005 unknown handset", 400, _error(30005, 400), Outcome.FAILED),
    ("30006 landline", 400, _error(30006, 400), Outcome.FAILED),
    ("30007 carrier filtered", 400, _error(30007, 400), Outcome.FAILED),
    ("20003 auth", 401, _error(20003, 401), Outcome.CONFIG_ERROR),
    ("500", 500, {}, Outcome.RETRY),
    ("503", 503, {}, Outcome.RETRY),
]


@pytest.fixture
def twilio(client: httpx.Client) -> TwilioSmsProvider:
    return TwilioSmsProvider(
        client=client,
        clock=FrozenClock(),
        account_sid="AC123",
        auth_token="secret-token",
        messaging_service_sid="MG123",
        status_callback="https://notify.example/webhooks/twilio/status",
    )


@pytest.mark.parametrize(("label", "status", "body", "outcome"), ROWS, ids=[r[0] for r in ROWS])
@respx.mock
def test_every_twilio_answer_maps_to_one_outcome(twilio: TwilioSmsProvider, label, status, body, outcome) -> None:  # type: ignore[no-untyped-def]
    route = respx.post(URL).respond(status, json=body)
    result = twilio.send(message=make_message(Channel.SMS, address="+12125550123", platform=None))
    assert result.outcome is outcome, label
    form = dict(httpx.QueryParams(route.calls.last.request.content.decode()))
    assert form["To"] == "+12125550123" and form["MessagingServiceSid"] == "MG123"
    assert form["StatusCallback"].endswith("/webhooks/twilio/status")
    assert route.calls.last.request.headers["authorization"].startswith("Basic ")


def test_every_error_code_has_a_row() -> None:
    for code in ERROR_CODES:
        assert any(str(code) in str(row[2]) for row in ROWS), code


@respx.mock
def test_read_timeout_is_not_retried_to_avoid_a_duplicate_text(twilio: TwilioSmsProvider) -> None:
    route = respx.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    result = twilio.send(message=make_message(Channel.SMS, address="+12125550123", platform=None))
    assert result.outcome is Outcome.FAILED and "duplicate" in (result.detail or "")
    assert route.call_count == 1


@respx.mock
def test_connect_error_is_safe_to_retry(twilio: TwilioSmsProvider) -> None:
    respx.post(URL).mock(side_effect=httpx.ConnectError("refused"))
    result = twilio.send(message=make_message(Channel.SMS, address="+12125550123", platform=None))
    assert result.outcome is Outcome.RETRY


def test_signature_matches_twilios_algorithm_and_rejects_forgeries() -> None:
    url = "https://notify.example/webhooks/twilio/inbound?x=1"
    params = {"From": "+12125550123", "Body": "STOP", "MessageSid": "SM1"}
    # Independent computation of Twilio's documented scheme.
    data = url + "BodySTOP" + "From+12125550123" + "MessageSidSM1"
    expected = base64.b64encode(hmac.new(b"tok", data.encode(), hashlib.sha1).digest()).decode()
    assert twilio_signature("tok", url, params) == expected
    assert verify_twilio_signature("tok", url, params, expected)
    assert not verify_twilio_signature("tok", url, {**params, "Body": "START"}, expected)
    assert not verify_twilio_signature("other", url, params, expected)
    assert not verify_twilio_signature("tok", url, params, None)
