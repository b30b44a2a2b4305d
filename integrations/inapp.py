"""The secure messaging app's API: the one place message-adjacent text may go. A configurable HTTPS endpoint
with bearer auth taking ``{patient_ref, category, text, idempotency_key}``; it dedupes on the key, so a retry
after a timeout is safe."""

from __future__ import annotations

import httpx

from integrations.base import OutboundMessage, Outcome, SendResult
from integrations.http import retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock


def classify(response: httpx.Response, retry_after: float | None) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        ref = None
        try:
            ref = response.json().get("id")
        except ValueError:
            pass
        return SendResult(outcome=Outcome.ACCEPTED, provider_ref=str(ref) if ref is not None else None)
    if status == 429 or status >= 500:
        return SendResult(outcome=Outcome.RETRY, error_code=str(status), retry_after=retry_after)
    if status in (401, 403):
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=str(status))
    return SendResult(outcome=Outcome.FAILED, error_code=str(status), detail="request rejected")


class InAppProvider:
    channel = Channel.INAPP
    platforms = None

    def __init__(self, *, client: httpx.Client, clock: Clock, url: str, token: str, name: str = "inapp") -> None:
        self.name = name
        self._client = client
        self._clock = clock
        self._url = url
        self._token = token

    def send(self, *, message: OutboundMessage) -> SendResult:
        request = self._client.build_request(
            "POST",
            self._url,
            json={
                "patient_ref": message.address,
                "category": message.category,
                "text": message.body,
                "idempotency_key": message.idempotency_key,
            },
            headers={"authorization": f"Bearer {self._token}"},
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            # The endpoint dedupes on idempotency_key, so even a read timeout is safe to retry.
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, retry_after_seconds(response.headers, self._clock.now()))
