"""The secure messaging app's API: the one place message-adjacent text may go. A configurable HTTPS endpoint
with bearer auth taking ``{patient_ref, category, text, idempotency_key}``; it dedupes on the key, so a retry
after a timeout is safe.

The contract we offer the platform (its API is not public; this is what this adapter speaks):

Single: ``POST <url>`` with ``Authorization: Bearer <token>`` and
``{"patient_ref": ..., "category": ..., "text": ..., "idempotency_key": ...}``; answers 201 (or 200) with
``{"id": ...}``; 409 when that key was already taken (a retry of something that got through: accepted); other
4xx for a message it will never take; 401/403 for our credentials; 429/5xx (``Retry-After`` honoured) when it
cannot take it now.

Batch: ``POST <url>/batch`` (the configured single URL with ``/batch`` appended to its path, e.g.
``https://msg.example/api/notices`` -> ``https://msg.example/api/notices/batch``; ``batch_url`` overrides it), same
auth, with ``{"messages": [<single body>, ...]}``: 1 to :data:`DEFAULT_MAX_BATCH` (500) messages, each
``idempotency_key`` at most once per batch. Each message is taken or refused on its own, and the batch is answered
``200`` with one result per message, each naming its key::

    {"results": [{"idempotency_key": "...", "status": 201, "id": "..."},
                 {"idempotency_key": "...", "status": 409, "id": "..."},
                 {"idempotency_key": "...", "status": 400, "error": "unknown_patient"},
                 {"idempotency_key": "...", "status": 503, "retry_after": 30}]}

Per-message ``status`` means what the single endpoint's would: 201/200 taken; **409 = that key was already
taken** (a retry of something that got through), so accepted; other 4xx refused for good (``error``: a short
code, never patient data); 429/5xx not taken now (``retry_after`` seconds, optional). Results may come in any
order: they are matched by key. A message the answer leaves out is retried (the key makes that safe). The whole
request may instead be answered 401/403 (credentials), 429/5xx with ``Retry-After`` (nothing taken: every message
is retried), or 400/413/422 (a malformed batch: every message fails). 404, 405 or 501 mean the platform has no
batch endpoint yet: the adapter then sends those messages one by one, and keeps doing so for
:data:`BATCH_RECHECK_SECONDS` before trying the batch endpoint again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import httpx

from integrations.base import OutboundMessage, Outcome, SendResult, complete, not_sent
from integrations.http import retry_after_seconds, send_with_blip_retry
from worker.categories import Channel
from worker.clock import Clock

#: Messages per batch request.
DEFAULT_MAX_BATCH = 500
#: Batch endpoint answers meaning "no batch endpoint here": send one by one instead.
NO_BATCH_ENDPOINT = frozenset({404, 405, 501})
#: How long to send one by one after the platform said it has no batch endpoint, before asking again.
BATCH_RECHECK_SECONDS = 300.0


def classify_status(
    status: int, *, ref: object = None, retry_after: float | None = None, error: str | None = None
) -> SendResult:
    """One answer status (of the single endpoint, or of one batch item) -> one outcome."""
    if 200 <= status < 300 or status == 409:
        return SendResult(
            outcome=Outcome.ACCEPTED,
            provider_ref=str(ref) if ref is not None else None,
            detail="already accepted (duplicate key)" if status == 409 else None,
        )
    if status == 429 or status >= 500:
        return SendResult(outcome=Outcome.RETRY, error_code=str(status), retry_after=retry_after)
    if status in (401, 403):
        return SendResult(outcome=Outcome.CONFIG_ERROR, error_code=str(status))
    return SendResult(outcome=Outcome.FAILED, error_code=str(status), detail=(error or "request rejected")[:200])


def classify(response: httpx.Response, retry_after: float | None) -> SendResult:
    status = response.status_code
    if 200 <= status < 300 or status == 409:  # 409: that key was taken before (a retry of what got through)
        ref = None
        try:
            ref = response.json().get("id")
        except (ValueError, AttributeError):
            pass
        return classify_status(status, ref=ref)
    return classify_status(status, retry_after=retry_after)


def batch_url_for(url: str) -> str:
    """The batch endpoint next to a single-message URL: ``/batch`` appended to its path (query kept)."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(path=parsed.path.rstrip("/") + "/batch"))


def _item(message: OutboundMessage) -> dict[str, str]:
    return {
        "patient_ref": message.address,
        "category": message.category,
        "text": message.body,
        "idempotency_key": message.idempotency_key,
    }


def _item_result(item: Mapping[str, Any], header_wait: float | None) -> SendResult:
    status = item.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        return SendResult(outcome=Outcome.RETRY, error_code="bad_answer", detail="batch result without a status")
    wait = item.get("retry_after")
    retry_after = float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) else header_wait
    error = item.get("error")
    return classify_status(
        status, ref=item.get("id"), retry_after=retry_after, error=str(error) if error is not None else None
    )


class InAppProvider:
    channel = Channel.INAPP
    platforms = None

    def __init__(
        self,
        *,
        client: httpx.Client,
        clock: Clock,
        url: str,
        token: str,
        name: str = "inapp",
        batch_url: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self.name = name
        self._client = client
        self._clock = clock
        self._url = url
        self._batch_url = batch_url or batch_url_for(url)
        self._token = token
        #: Messages per batch request.
        self.max_batch = max(1, max_batch)
        #: Until when to send one by one because the platform said it has no batch endpoint.
        self.batch_unavailable_until: datetime | None = None

    def send(self, *, message: OutboundMessage) -> SendResult:
        request = self._client.build_request(
            "POST", self._url, json=_item(message), headers={"authorization": f"Bearer {self._token}"}
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            # The endpoint dedupes on idempotency_key, so even a read timeout is safe to retry.
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, retry_after_seconds(response.headers, self._clock.now()))

    def send_many(self, *, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send many in-app messages in batches of ``max_batch``; one result per message, in order.

        A key given twice is sent once and both messages get its result.
        """
        first: dict[str, int] = {}
        unique: list[int] = []
        for index, message in enumerate(messages):
            if message.idempotency_key not in first:
                first[message.idempotency_key] = index
                unique.append(index)
        results: list[SendResult | None] = [None] * len(messages)
        refusal: SendResult | None = None
        for start in range(0, len(unique), self.max_batch):
            chunk = unique[start : start + self.max_batch]
            if refusal is not None:
                for index in chunk:
                    results[index] = not_sent(refusal)
            elif self._batch_unavailable():
                refusal = self._send_one_by_one(messages, chunk, results)
            else:
                refusal = self._send_batch(messages, chunk, results)
        for index, message in enumerate(messages):
            if results[index] is None:
                results[index] = results[first[message.idempotency_key]]
        return complete(results)

    def _batch_unavailable(self) -> bool:
        until = self.batch_unavailable_until
        return until is not None and self._clock.now() < until

    def _send_batch(
        self, messages: Sequence[OutboundMessage], chunk: list[int], results: list[SendResult | None]
    ) -> SendResult | None:
        """One batch request; returns the whole-request refusal that should stop the call, if any."""
        request = self._client.build_request(
            "POST",
            self._batch_url,
            json={"messages": [_item(messages[i]) for i in chunk]},
            headers={"authorization": f"Bearer {self._token}"},
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            network = SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
            for index in chunk:
                results[index] = network
            return network
        status = response.status_code
        if status in NO_BATCH_ENDPOINT:
            self.batch_unavailable_until = self._clock.now() + timedelta(seconds=BATCH_RECHECK_SECONDS)
            return self._send_one_by_one(messages, chunk, results)
        wait = retry_after_seconds(response.headers, self._clock.now())
        if not 200 <= status < 300:
            whole = classify_status(status, retry_after=wait, error="batch rejected")
            for index in chunk:
                results[index] = whole
            return whole if whole.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR) else None
        by_key = self._results_by_key(response)
        for index in chunk:
            item = by_key.get(messages[index].idempotency_key)
            results[index] = (
                _item_result(item, wait)
                if item is not None
                else SendResult(outcome=Outcome.RETRY, error_code="bad_answer", detail="no result for this message")
            )
        return None

    @staticmethod
    def _results_by_key(response: httpx.Response) -> dict[str, Mapping[str, Any]]:
        try:
            items = response.json().get("results")
        except (ValueError, AttributeError):
            return {}
        if not isinstance(items, list):
            return {}
        return {str(i["idempotency_key"]): i for i in items if isinstance(i, dict) and "idempotency_key" in i}

    def _send_one_by_one(
        self, messages: Sequence[OutboundMessage], chunk: list[int], results: list[SendResult | None]
    ) -> SendResult | None:
        for position, index in enumerate(chunk):
            result = self.send(message=messages[index])
            results[index] = result
            if result.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR):
                for rest in chunk[position + 1 :]:
                    results[rest] = not_sent(result)
                return result
        return None
