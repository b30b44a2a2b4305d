"""SendGrid v3 mail send, and the Event Webhook signature check (ECDSA P-256 / SHA-256).

Marketing email carries the RFC 8058 one-click unsubscribe headers and the unsubscribe group. Only non-PHI
custom args (our notification id) travel to SendGrid, so events can be matched back.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.http import retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock


def _rate_limit_reset(headers: httpx.Headers, now: datetime) -> float | None:
    value = headers.get("x-ratelimit-reset")
    if not value:
        return None
    try:
        return max(0.0, float(value) - now.timestamp())
    except ValueError:
        return None


def classify(response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if status == 202:
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=response.headers.get("x-message-id"))
    if status == 429:
        wait = _rate_limit_reset(response.headers, now) or retry_after_seconds(response.headers, now)
        return SendResult(outcome=Outcome.RETRY, error_code="429", retry_after=wait)
    if status >= 500:
        return SendResult(
            outcome=Outcome.RETRY, error_code=str(status), retry_after=retry_after_seconds(response.headers, now)
        )
    if status in (401, 403):
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=str(status), detail="API key rejected")
    return SendResult(outcome=Outcome.FAILED, error_code=str(status), detail="request rejected")


class SendGridEmailProvider:
    channel = Channel.EMAIL
    platforms = None

    def __init__(
        self,
        *,
        client: httpx.Client,
        clock: Clock,
        api_key: str,
        from_email: str,
        from_name: str = "Partum Health",
        unsubscribe_group_id: int | None = None,
        postal_address: str = "",
        base_url: str = "https://api.sendgrid.com",
        name: str = "sendgrid",
    ) -> None:
        self.name = name
        self._client = client
        self._clock = clock
        self._key = api_key
        self._from = {"email": from_email, "name": from_name}
        self._group = unsubscribe_group_id
        self._postal = postal_address
        self._url = f"{base_url.rstrip('/')}/v3/mail/send"

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        text = message.body
        if self._postal:
            text = f"{text}\n\n{self._postal}"
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": message.address}]}],
            "from": self._from,
            "subject": message.title,
            "content": [{"type": "text/plain", "value": text}],
            "custom_args": {"notification_id": str(message.notification_id)},
            "categories": [message.category],
        }
        if message.promotional:
            url = message.data.get("unsubscribe_url")
            if not url:
                raise ValueError("promotional email without an unsubscribe URL")
            body["headers"] = {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
            if self._group is not None:
                body["asm"] = {"group_id": self._group}
        return body

    def send(self, *, message: OutboundMessage) -> SendResult:
        request = self._client.build_request(
            "POST", self._url, json=self.payload(message), headers={"authorization": f"Bearer {self._key}"}
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, self._clock.now())


def verify_event_signature(public_key: str, payload: bytes, signature: str | None, timestamp: str | None) -> bool:
    """Check ``X-Twilio-Email-Event-Webhook-Signature`` over ``timestamp + raw body``.

    ``public_key`` is the base64 DER (SubjectPublicKeyInfo) key shown in SendGrid's settings.
    """
    if not signature or not timestamp:
        return False
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(base64.b64decode(signature), timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
