"""Twilio Programmable Messaging (SMS), and the webhook signature check.

Twilio has no idempotency key: a request that may have reached Twilio (read timeout) is NOT retried, to avoid
a duplicate text; only answers that say "not processed" (429/20429, 5xx, connect errors) are retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

import httpx

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.http import NOT_SENT_ERRORS, retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock

#: Twilio error codes -> outcome (PROVIDERS.md).
ERROR_CODES: dict[int, Outcome] = {
    21610: Outcome.OPTED_OUT,  # recipient replied STOP
    21211: Outcome.FAILED,  # invalid To
    21614: Outcome.FAILED,  # not a mobile number
    20429: Outcome.RETRY,  # too many requests: never processed
    30003: Outcome.RETRY,  # unreachable handset
    30004: Outcome.FAILED,  # blocked
    30005: Outcome.FAILED,  # unknown handset
    30006: Outcome.FAILED,  # landline
    30007: Outcome.FAILED,  # carrier filtered
    20003: Outcome.CONFIG_ERROR,  # authentication failed
}


def classify(response: httpx.Response, retry_after: float | None) -> SendResult:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    if status == 201:
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=body.get("sid"))
    code = body.get("code")
    label = str(code) if code is not None else str(status)
    if isinstance(code, int) and code in ERROR_CODES:
        outcome = ERROR_CODES[code]
        return SendResult(
            outcome=outcome, error_code=label, retry_after=retry_after if outcome is Outcome.RETRY else None
        )
    if status == 429 or status >= 500:
        return SendResult(outcome=Outcome.RETRY, error_code=label, retry_after=retry_after)
    if status in (401, 403):
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=label)
    return SendResult(outcome=Outcome.FAILED, error_code=label, detail=f"HTTP {status}")


class TwilioSmsProvider:
    channel = Channel.SMS
    platforms = None

    def __init__(
        self,
        *,
        client: httpx.Client,
        clock: Clock,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
        base_url: str = "https://api.twilio.com",
        name: str = "twilio",
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("twilio needs from_number or messaging_service_sid")
        self.name = name
        self._client = client
        self._clock = clock
        self._auth = (account_sid, auth_token)
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        self._from = from_number
        self._service = messaging_service_sid
        self._callback = status_callback

    def send(self, *, message: OutboundMessage) -> SendResult:
        form = {"To": message.address, "Body": message.body}
        if self._service:
            form["MessagingServiceSid"] = self._service
        else:
            form["From"] = self._from or ""
        if self._callback:
            form["StatusCallback"] = self._callback
        basic = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
        request = self._client.build_request("POST", self._url, data=form, headers={"authorization": f"Basic {basic}"})
        try:
            response = send_with_blip_retry(self._client, request)
        except NOT_SENT_ERRORS as exc:
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        except httpx.HTTPError as exc:
            return SendResult(
                outcome=Outcome.FAILED,
                error_code="unknown",
                detail=f"{type(exc).__name__}: may have been accepted; not retried to avoid a duplicate text",
            )
        return classify(response, retry_after_seconds(response.headers, self._clock.now()))


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """base64(HMAC-SHA1(auth_token, url + each POST param name+value in sorted name order))."""
    payload = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify_twilio_signature(auth_token: str, url: str, params: Mapping[str, str], signature: str | None) -> bool:
    """Constant-time check of ``X-Twilio-Signature``."""
    if not signature:
        return False
    return hmac.compare_digest(twilio_signature(auth_token, url, params), signature)
