"""APNs over HTTP/2 with ES256 token auth: answers table, JWT reuse and re-signing."""

from __future__ import annotations

import json

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization

from integrations.apns import ApnsProvider
from integrations.base import Outcome
from tests.integrations.conftest import make_message
from worker.clock import FrozenClock

URL = "https://api.push.apple.com/3/device/device-token-abc"

ROWS = [
    ("200", 200, None, {"apns-id": "1B2C"}, Outcome.ACCEPTED),
    ("400 BadDeviceToken", 400, "BadDeviceToken", {}, Outcome.TOKEN_DEAD),
    ("400 DeviceTokenNotForTopic", 400, "DeviceTokenNotForTopic", {}, Outcome.TOKEN_DEAD),
    ("410 Unregistered", 410, "Unregistered", {}, Outcome.TOKEN_DEAD),
    ("410 ExpiredToken", 410, "ExpiredToken", {}, Outcome.TOKEN_DEAD),
    ("400 BadCollapseId", 400, "BadCollapseId", {}, Outcome.FAILED),
    ("413 PayloadTooLarge", 413, "PayloadTooLarge", {}, Outcome.FAILED),
    ("403 Forbidden", 403, "Forbidden", {}, Outcome.FAILED),
    ("429 TooManyRequests", 429, "TooManyRequests", {}, Outcome.RETRY),
    ("500 InternalServerError", 500, "InternalServerError", {}, Outcome.RETRY),
    ("503 ServiceUnavailable", 503, "ServiceUnavailable", {}, Outcome.RETRY),
]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def apns(ec_private_pem: str, clock: FrozenClock) -> ApnsProvider:
    return ApnsProvider(
        client=httpx.Client(http2=True),
        clock=clock,
        private_key_pem=ec_private_pem,
        key_id="KEY123",
        team_id="TEAM123",
        topic="com.partum.app",
    )


@pytest.mark.parametrize(("label", "status", "reason", "headers", "outcome"), ROWS, ids=[r[0] for r in ROWS])
@respx.mock
def test_every_apns_answer_maps_to_one_outcome(apns: ApnsProvider, label, status, reason, headers, outcome) -> None:  # type: ignore[no-untyped-def]
    body = {"reason": reason} if reason else None
    if status == 410:
        body = {"reason": reason, "timestamp": 1700000000000}
    respx.post(URL).respond(status, json=body, headers=headers)
    result = apns.send(message=make_message(platform="ios"))
    assert result.outcome is outcome, label
    if status >= 500:
        assert result.retry_after is not None and result.retry_after >= 60


@respx.mock
def test_request_headers_and_es256_token(apns: ApnsProvider, ec_private_pem: str) -> None:
    route = respx.post(URL).respond(200, headers={"apns-id": "abc"})
    apns.send(message=make_message(platform="ios"))
    request = route.calls.last.request
    assert request.headers["apns-topic"] == "com.partum.app"
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-priority"] == "10"
    assert len(request.headers["apns-collapse-id"].encode()) <= 64
    token = request.headers["authorization"].removeprefix("bearer ")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": "KEY123", "typ": "JWT"}
    public = serialization.load_pem_private_key(ec_private_pem.encode(), None).public_key()
    claims = jwt.decode(token, public, algorithms=["ES256"])  # type: ignore[arg-type]
    assert claims["iss"] == "TEAM123"
    assert json.loads(request.content)["aps"]["alert"]["body"] == "You have a new message from your care team."


@respx.mock
def test_token_is_reused_then_resigned_between_20_and_60_minutes(apns: ApnsProvider, clock: FrozenClock) -> None:
    respx.post(URL).respond(200)
    apns.send(message=make_message(platform="ios"))
    clock.advance(minutes=20)
    apns.send(message=make_message(platform="ios"))
    assert apns.signatures == 1, "re-signing under 20 minutes risks TooManyProviderTokenUpdates"
    clock.advance(minutes=31)  # 51 minutes old
    apns.send(message=make_message(platform="ios"))
    assert apns.signatures == 2, "a token must be re-signed before it is an hour old"


@respx.mock
def test_expired_provider_token_is_resigned_once_then_config_error(apns: ApnsProvider) -> None:
    route = respx.post(URL).mock(
        side_effect=[httpx.Response(403, json={"reason": "ExpiredProviderToken"}), httpx.Response(200)]
    )
    assert apns.send(message=make_message(platform="ios")).outcome is Outcome.ACCEPTED
    assert route.call_count == 2 and apns.signatures == 2
    route.side_effect = None
    route.return_value = httpx.Response(403, json={"reason": "InvalidProviderToken"})
    result = apns.send(message=make_message(platform="ios"))
    assert result.outcome is Outcome.CONFIG_ERROR and result.error_code == "InvalidProviderToken"
