"""FCM HTTP v1: every answer in PROVIDERS.md's table, through respx at the httpx boundary."""

from __future__ import annotations

import httpx
import pytest
import respx

from integrations.base import Outcome
from integrations.fcm import ERROR_CODES, FcmProvider
from tests.integrations.conftest import make_message
from worker.clock import FrozenClock

SEND = "https://fcm.googleapis.com/v1/projects/carenotify-test/messages:send"
TOKEN = "https://oauth2.googleapis.com/token"


def _err(status: int, code: str | None, message: str = "", violations: bool = False, status_name: str = "") -> dict:
    details = []
    if code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code})
    if violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value"}],
            }
        )
    return {"error": {"code": status, "message": message, "status": status_name or code or "", "details": details}}


ROWS = [
    ("200 accepted", 200, {"name": "projects/carenotify-test/messages/0:1"}, {}, Outcome.ACCEPTED, None),
    (
        "404 UNREGISTERED",
        404,
        _err(404, "UNREGISTERED", "Requested entity was not found."),
        {},
        Outcome.TOKEN_DEAD,
        None,
    ),
    (
        "400 invalid token",
        400,
        _err(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
        {},
        Outcome.TOKEN_DEAD,
        None,
    ),
    ("403 SENDER_ID_MISMATCH", 403, _err(403, "SENDER_ID_MISMATCH", "SenderId mismatch"), {}, Outcome.TOKEN_DEAD, None),
    (
        "400 field violations",
        400,
        _err(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'", violations=True),
        {},
        Outcome.FAILED,
        None,
    ),
    (
        "401 THIRD_PARTY_AUTH_ERROR",
        401,
        _err(401, "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS"),
        {},
        Outcome.CONFIG_ERROR,
        None,
    ),
    (
        "429 QUOTA_EXCEEDED",
        429,
        _err(429, "QUOTA_EXCEEDED", "Quota exceeded"),
        {"Retry-After": "5"},
        Outcome.RETRY,
        60.0,
    ),
    (
        "503 UNAVAILABLE Retry-After",
        503,
        _err(503, "UNAVAILABLE", "The service is unavailable."),
        {"Retry-After": "30"},
        Outcome.RETRY,
        30.0,
    ),
    ("500 INTERNAL", 500, _err(500, "INTERNAL", "Internal error"), {}, Outcome.RETRY, None),
    # A wrong project id: Google's bare NOT_FOUND, no FcmError. Nothing is known about the device: keep it.
    (
        "404 NOT_FOUND without FcmError (wrong project)",
        404,
        _err(404, None, "Requested entity was not found.", status_name="NOT_FOUND"),
        {},
        Outcome.CONFIG_ERROR,
        None,
    ),
    ("404 empty JSON (wrong base URL)", 404, {}, {}, Outcome.CONFIG_ERROR, None),
]


@pytest.fixture
def fcm(client: httpx.Client, service_account_json: str) -> FcmProvider:
    return FcmProvider(client=client, clock=FrozenClock(), service_account_json=service_account_json)


@pytest.mark.parametrize(
    ("label", "status", "body", "headers", "outcome", "retry_after"), ROWS, ids=[r[0] for r in ROWS]
)
@respx.mock
def test_every_fcm_answer_maps_to_one_outcome(
    fcm: FcmProvider, label: str, status: int, body: dict, headers: dict, outcome: Outcome, retry_after: float | None
) -> None:
    respx.post(TOKEN).respond(200, json={"access_token": "ya29.test", "expires_in": 3600, "token_type": "Bearer"})
    route = respx.post(SEND).respond(status, json=body, headers=headers)
    result = fcm.send(message=make_message())
    assert result.outcome is outcome, label
    assert result.retry_after == retry_after
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer ya29.test"


def test_every_error_code_in_the_table_is_classified() -> None:
    assert set(ERROR_CODES.values()) <= set(Outcome)
    for code in ERROR_CODES:
        assert any(code in str(row[2]) for row in ROWS), f"no test row for {code}"


@respx.mock
def test_oauth_token_is_cached_and_payload_is_phi_free_v1_shape(fcm: FcmProvider) -> None:
    token = respx.post(TOKEN).respond(200, json={"access_token": "ya29.a", "expires_in": 3600, "token_type": "Bearer"})
    send = respx.post(SEND).respond(200, json={"name": "projects/carenotify-test/messages/1"})
    for _ in range(3):
        assert fcm.send(message=make_message()).outcome is Outcome.ACCEPTED
    assert token.call_count == 1 and send.call_count == 3
    import json

    body = json.loads(send.calls.last.request.content)["message"]
    assert body["token"] == "device-token-abc"
    assert body["notification"] == {"title": "New message", "body": "You have a new message from your care team."}
    assert all(isinstance(v, str) for v in body["data"].values())
    assert body["android"]["ttl"].endswith("s")


@respx.mock
def test_token_close_to_expiry_is_refreshed(fcm: FcmProvider) -> None:
    token = respx.post(TOKEN).respond(
        200, json={"access_token": "ya29.short", "expires_in": 30, "token_type": "Bearer"}
    )
    respx.post(SEND).respond(200, json={"name": "x"})
    fcm.send(message=make_message())
    fcm.send(message=make_message())
    assert token.call_count == 2


@respx.mock
def test_token_endpoint_down_is_a_config_error_without_secrets(fcm: FcmProvider, service_account_json: str) -> None:
    respx.post(TOKEN).respond(400, json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    result = fcm.send(message=make_message())
    assert result.outcome is Outcome.CONFIG_ERROR
    assert "PRIVATE KEY" not in (result.detail or "")


@respx.mock
def test_connect_error_is_retried_in_process_then_reported_as_retry(fcm: FcmProvider) -> None:
    respx.post(TOKEN).respond(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
    route = respx.post(SEND).mock(side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json={"name": "ok"})])
    assert fcm.send(message=make_message()).outcome is Outcome.ACCEPTED
    assert route.call_count == 2
    route.side_effect = httpx.ConnectError("refused")
    result = fcm.send(message=make_message())
    assert result.outcome is Outcome.RETRY and result.error_code == "network"


@respx.mock
def test_an_unexplained_404_never_prunes_a_device(fcm: FcmProvider) -> None:
    """A proxy's or a wrong host's 404 page (not JSON) is our configuration, not a dead token."""
    respx.post(TOKEN).respond(200, json={"access_token": "t", "expires_in": 3600, "token_type": "Bearer"})
    respx.post(SEND).respond(404, text="<html><body>404 Not Found</body></html>", headers={"content-type": "text/html"})
    result = fcm.send(message=make_message())
    assert result.outcome is Outcome.CONFIG_ERROR and result.error_code == "404"
    assert "fcm_project_id" in (result.detail or "")
