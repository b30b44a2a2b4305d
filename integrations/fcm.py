"""Firebase Cloud Messaging HTTP v1.

Auth: a service account's OAuth2 token (google-auth), cached until close to expiry and refreshed through our
httpx client. Every FCM answer is mapped to one outcome in :func:`classify` (PROVIDERS.md's table).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
from google.oauth2 import service_account

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.http import GoogleAuthRequest, retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
QUOTA_MIN_DELAY = 60.0

#: FcmError.errorCode -> outcome (when the HTTP status alone does not decide).
ERROR_CODES: dict[str, Outcome] = {
    "UNREGISTERED": Outcome.TOKEN_DEAD,
    "SENDER_ID_MISMATCH": Outcome.TOKEN_DEAD,
    "THIRD_PARTY_AUTH_ERROR": Outcome.CONFIG_ERROR,
    "QUOTA_EXCEEDED": Outcome.RETRY,
    "UNAVAILABLE": Outcome.RETRY,
    "INTERNAL": Outcome.RETRY,
    "INVALID_ARGUMENT": Outcome.FAILED,
}


#: FcmError codes that say the device token itself is dead: only these (and the invalid-token answer) prune.
DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})


def _error_parts(body: Any) -> tuple[str | None, str | None, str, bool]:
    """(FcmError errorCode, google.rpc status, message, has field violations) from an FCM error body."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None, "", False
    fcm_code = None
    violations = False
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("google.firebase.fcm.v1.FcmError"):
            fcm_code = str(detail.get("errorCode") or "") or None
        elif kind.endswith("google.rpc.BadRequest") and detail.get("fieldViolations"):
            violations = True
    status_name = str(error.get("status") or "") or None
    return fcm_code, status_name, str(error.get("message", "")), violations


def classify(response: httpx.Response, retry_after: float | None) -> SendResult:
    """Map one FCM answer to exactly one outcome.

    A device is pruned only when FCM itself says its token is dead (an ``FcmError`` ``UNREGISTERED`` or
    ``SENDER_ID_MISMATCH``, or the invalid-registration-token answer). A 404 without that (a wrong project id
    or base URL: Google's bare ``NOT_FOUND``, or a proxy's page) says nothing about the device, and pruning on
    it would empty the device table of a misconfigured deployment: it is a config error.
    """
    status = response.status_code
    if status == 200:
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=str(response.json().get("name", "")) or None)
    try:
        body = response.json()
    except ValueError:
        body = {}
    fcm_code, status_name, message, violations = _error_parts(body)
    code = fcm_code or status_name
    label = code or str(status)
    if code == "INVALID_ARGUMENT" and not violations and "registration token" in message:
        return SendResult(outcome=Outcome.TOKEN_DEAD, error_code=label, detail="not a valid registration token")
    if fcm_code in DEAD_TOKEN_CODES:
        return SendResult(outcome=Outcome.TOKEN_DEAD, error_code=label)
    if status == 404:
        return SendResult(
            outcome=Outcome.CONFIG_ERROR,
            error_code=label,
            detail="HTTP 404 without an FCM error: check provider.fcm_project_id and provider.fcm_base_url",
        )
    if code == "QUOTA_EXCEEDED" or status == 429:
        return SendResult(outcome=Outcome.RETRY, error_code=label, retry_after=max(retry_after or 0.0, QUOTA_MIN_DELAY))
    if status in (500, 503) or code in ("UNAVAILABLE", "INTERNAL"):
        return SendResult(outcome=Outcome.RETRY, error_code=label, retry_after=retry_after)
    if code == "THIRD_PARTY_AUTH_ERROR" or status in (401, 403):
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=label, detail=f"HTTP {status}")
    if 400 <= status < 500:
        return SendResult(outcome=Outcome.FAILED, error_code=label, detail="request rejected (payload)")
    return SendResult(outcome=Outcome.RETRY, error_code=label, detail=f"HTTP {status}", retry_after=retry_after)


class FcmProvider:
    """Push to Android, web and FCM-registered iOS devices."""

    channel = Channel.PUSH
    platforms = frozenset({"android", "web", "ios"})

    def __init__(
        self,
        *,
        client: httpx.Client,
        clock: Clock,
        service_account_json: str,
        project_id: str | None = None,
        base_url: str = "https://fcm.googleapis.com",
        name: str = "fcm",
        platforms: frozenset[str] | None = None,
    ) -> None:
        info = json.loads(service_account_json)
        self.name = name
        if platforms is not None:
            self.platforms = platforms
        self._client = client
        self._clock = clock
        self._credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SCOPE]
        )
        self._project = project_id or info["project_id"]
        self._url = f"{base_url.rstrip('/')}/v1/projects/{self._project}/messages:send"
        self._lock = threading.Lock()

    def _token(self) -> str:
        """The cached OAuth token; refreshed (once, under a lock) when missing or about to expire."""
        with self._lock:
            if not self._credentials.valid:
                self._credentials.refresh(GoogleAuthRequest(self._client))
            return str(self._credentials.token)

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        collapse = f"n{message.notification_id}"
        return {
            "message": {
                "token": message.address,
                "notification": {"title": message.title, "body": message.body},
                "data": {k: str(v) for k, v in message.data.items() if k != "unsubscribe_url"},
                "android": {"collapse_key": collapse, "priority": "high", "ttl": "86400s"},
                "apns": {
                    "headers": {"apns-collapse-id": collapse, "apns-priority": "10"},
                    "payload": {"aps": {"sound": "default"}},
                },
            }
        }

    def send(self, *, message: OutboundMessage) -> SendResult:
        try:
            token = self._token()
        except Exception as exc:  # google-auth raises RefreshError/TransportError; never echo the key
            return SendResult(
                outcome=Outcome.CONFIG_ERROR, error_code="oauth", detail=f"token refresh failed: {type(exc).__name__}"
            )
        request = self._client.build_request(
            "POST", self._url, json=self.payload(message), headers={"authorization": f"Bearer {token}"}
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, retry_after_seconds(response.headers, self._clock.now()))
