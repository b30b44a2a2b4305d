"""Apple Push Notification service over HTTP/2 with token (JWT ES256) auth.

The provider token is signed once and reused; it is re-signed after ``resign_after`` (50 min by default: Apple
wants it between 20 and 60 minutes old) or when Apple says it expired. Answers map in :func:`classify`.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.http import retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock

PRODUCTION = "https://api.push.apple.com"
SANDBOX = "https://api.sandbox.push.apple.com"
SERVER_ERROR_MIN_DELAY = 60.0  # Apple suggests minutes, not seconds

TOKEN_DEAD_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"})
RESIGN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


def classify(response: httpx.Response, retry_after: float | None) -> SendResult:
    """Map one APNs answer to exactly one outcome."""
    status = response.status_code
    if status == 200:
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=response.headers.get("apns-id"))
    try:
        reason = str(response.json().get("reason", ""))
    except ValueError:
        reason = ""
    label = reason or str(status)
    if reason in TOKEN_DEAD_REASONS or status == 410:
        return SendResult(outcome=Outcome.TOKEN_DEAD, error_code=label)
    if reason in RESIGN_REASONS:
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=label, detail="provider token rejected")
    if status == 429:
        return SendResult(outcome=Outcome.RETRY, error_code=label, retry_after=max(retry_after or 0.0, 1.0))
    if status >= 500:
        return SendResult(
            outcome=Outcome.RETRY, error_code=label, retry_after=max(retry_after or 0.0, SERVER_ERROR_MIN_DELAY)
        )
    return SendResult(outcome=Outcome.FAILED, error_code=label, detail=f"HTTP {status}")


class ApnsProvider:
    """Push to iOS devices registered directly with APNs."""

    channel = Channel.PUSH
    platforms = frozenset({"ios"})

    def __init__(
        self,
        *,
        client: httpx.Client,
        clock: Clock,
        private_key_pem: str,
        key_id: str,
        team_id: str,
        topic: str,
        sandbox: bool = False,
        resign_after: timedelta = timedelta(minutes=50),
        base_url: str | None = None,
        name: str = "apns",
    ) -> None:
        self.name = name
        self._client = client
        self._clock = clock
        self._key = private_key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._topic = topic
        self._base = (base_url or (SANDBOX if sandbox else PRODUCTION)).rstrip("/")
        self._resign_after = resign_after
        self._lock = threading.Lock()
        self._token: str | None = None
        self._signed_at: datetime | None = None
        self.signatures = 0  # how many times we signed: observable, to prove we do not re-sign too often

    def provider_token(self, *, force: bool = False) -> str:
        """The cached JWT; re-signed only when older than ``resign_after`` or when forced."""
        now = self._clock.now()
        with self._lock:
            stale = self._signed_at is None or now - self._signed_at >= self._resign_after
            if force or stale or self._token is None:
                self._token = jwt.encode(
                    {"iss": self._team_id, "iat": int(now.timestamp())},
                    self._key,
                    algorithm="ES256",
                    headers={"kid": self._key_id},
                )
                self._signed_at = now
                self.signatures += 1
            return self._token

    def _request(self, message: OutboundMessage, token: str) -> httpx.Request:
        expiration = int((self._clock.now() + timedelta(days=1)).timestamp())
        body: dict[str, Any] = {
            "aps": {"alert": {"title": message.title, "body": message.body}, "sound": "default"},
            **{k: v for k, v in message.data.items() if k != "unsubscribe_url"},
        }
        return self._client.build_request(
            "POST",
            f"{self._base}/3/device/{message.address}",
            json=body,
            headers={
                "authorization": f"bearer {token}",
                "apns-topic": self._topic,
                "apns-push-type": "alert",
                "apns-priority": "10",
                "apns-expiration": str(expiration),
                "apns-collapse-id": f"n{message.notification_id}"[:64],
                "apns-id": str(uuid.uuid5(uuid.NAMESPACE_URL, message.idempotency_key)),
            },
        )

    def send(self, *, message: OutboundMessage) -> SendResult:
        result = self._send_once(message, self.provider_token())
        if result.outcome is Outcome.CONFIG_ERROR and result.error_code in RESIGN_REASONS:
            # Re-sign once and try again; a second rejection is a real configuration problem.
            result = self._send_once(message, self.provider_token(force=True))
        return result

    def _send_once(self, message: OutboundMessage, token: str) -> SendResult:
        try:
            response = send_with_blip_retry(self._client, self._request(message, token))
        except httpx.HTTPError as exc:
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, retry_after_seconds(response.headers, self._clock.now()))
