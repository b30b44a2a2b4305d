"""SendGrid v3 mail send, one recipient (``send``) or many in one request (``send_many``), and the Event Webhook
signature check (ECDSA P-256 / SHA-256).

Marketing email carries the RFC 8058 one-click unsubscribe headers and the unsubscribe group. Only non-PHI
custom args (our notification id) travel to SendGrid, so events can be matched back.

Bulk (``send_many``): one ``POST /v3/mail/send`` carries up to 1,000 ``personalizations`` (SendGrid's limit per
request), one per recipient, sharing everything at the top level: from, subject, content, category, unsubscribe
group. What is hers alone goes in her personalization, which SendGrid applies to her copy only:

- ``to``: her address, and nothing else about her (no name);
- ``custom_args``: ``{"notification_id": ...}`` (there is no top-level ``custom_args`` in a bulk request, so
  nothing can override or merge into it; per-personalization custom args override top-level ones of the same key);
- ``headers`` (marketing): her own ``List-Unsubscribe: <her signed URL>`` and ``List-Unsubscribe-Post:
  List-Unsubscribe=One-Click`` (RFC 8058); none at the top level;
- ``substitutions``: ``{"-unsubscribe_url-": her URL}`` when the text carries her unsubscribe link
  (worker/templates.py puts it in the marketing body), and ``{"-preferences_url-": her URL}`` for her
  preference-page link in every email's footer: the shared content says ``-unsubscribe_url-`` where the
  single send says the URL, and SendGrid substitutes per personalization (legacy substitutions: they apply to
  content without a ``template_id``; ``dynamic_template_data`` would need a stored dynamic template).

So one content serves every recipient whose text differs only by her own link. Messages that differ in anything
else shared (subject, text after that substitution, category, marketing or not: e.g. two locales, two
templates) go in separate requests, one per group; a group over 1,000 is split, and an address appears at most
once per request (SendGrid refuses a request naming an address twice), so a repeat goes in the next request.

Answers (one ``X-Message-Id`` per request: SendGrid's per-recipient ``sg_message_id`` in events starts with it, and
events carry her ``notification_id``): 202 accepts every recipient of the request, with that id as her
``provider_ref``. A 400 rejects the whole request (nothing is sent); when its errors name personalizations
(``{"errors": [{"message": ..., "field": "personalizations.3.to.0.email", "help": ...}]}``) those recipients
fail (a malformed address is permanent) and the rest are sent again at once in a new request, at most
:data:`MAX_REQUESTS_PER_CHUNK` requests per chunk; whoever is left after that gets ``RETRY`` with
``error_code=NOT_SENT`` (never sent, not her fault). A 400 naming anything else (subject, content, from) fails the
whole request: everyone in it shares that part. 429, 5xx, 401/403 and network errors are whole-request refusals
(see :class:`integrations.base.BulkProvider`): the call stops there.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from integrations.base import NOT_SENT, OutboundMessage, Outcome, SendResult, complete, not_sent
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


#: SendGrid's limit of personalizations (and of to + cc + bcc recipients) per mail send request.
MAX_PERSONALIZATIONS = 1000
#: Stands for each recipient's own unsubscribe URL in content shared by a bulk request (a legacy substitution tag).
UNSUBSCRIBE_TAG = "-unsubscribe_url-"
#: The same for her own preference-page link (every email's footer).
PREFERENCES_TAG = "-preferences_url-"
#: After a 400 naming personalizations, the rest are sent again: at most this many requests for one chunk (one
#: request's worth of a group).
MAX_REQUESTS_PER_CHUNK = 3
#: ``error_code`` of a message refused before any request (e.g. marketing without an unsubscribe URL).
INVALID_MESSAGE = "invalid_message"

_PERSONALIZATION_FIELD = re.compile(r"^personalizations\.(\d+)(?:\.|$)")
_ADDRESS = re.compile(r"[^\s@<>\[\]()\"',;:]+@[^\s@<>\[\]()\"',;:]+")


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


def _scrub(text: str) -> str:
    """SendGrid's error text, safe to store: addresses it quotes back are masked, length bounded."""
    return _ADDRESS.sub("<address>", text)[:200]


def rejected_personalizations(response: httpx.Response) -> tuple[dict[int, str], list[str]]:
    """Read a 400's ``errors``: (personalization index -> why, for errors naming one; why, for every other error)."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError):
        errors = None
    if not isinstance(errors, list) or not errors:
        return {}, ["request rejected"]
    named: dict[int, str] = {}
    general: list[str] = []
    for error in errors:
        if not isinstance(error, dict):
            general.append("request rejected")
            continue
        field_ = str(error.get("field") or "")
        why = _scrub(f"{field_ or 'request'}: {error.get('message') or 'rejected'}")
        match = _PERSONALIZATION_FIELD.match(field_)
        if match:
            named.setdefault(int(match.group(1)), why)
        else:
            general.append(why)
    return named, general


@dataclass(frozen=True)
class _Prepared:
    """One message ready for a bulk request: what it shares with others (``group``) and what is hers."""

    index: int
    group: tuple[str, str, str, bool]
    personalization: dict[str, Any]


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
        max_batch: int = MAX_PERSONALIZATIONS,
    ) -> None:
        self.name = name
        self._client = client
        self._clock = clock
        self._key = api_key
        self._from = {"email": from_email, "name": from_name}
        self._group = unsubscribe_group_id
        self._postal = postal_address
        self._url = f"{base_url.rstrip('/')}/v3/mail/send"
        #: Personalizations per request (SendGrid takes at most 1,000).
        self.max_batch = max(1, min(max_batch, MAX_PERSONALIZATIONS))

    def _text(self, message: OutboundMessage) -> str:
        return f"{message.body}\n\n{self._postal}" if self._postal else message.body

    def payload(self, message: OutboundMessage) -> dict[str, Any]:
        text = self._text(message)
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
            body["headers"] = _unsubscribe_headers(url)
            if self._group is not None:
                body["asm"] = {"group_id": self._group}
        return body

    def _prepare(self, index: int, message: OutboundMessage) -> _Prepared | str:
        """Split one message into its shared part and her personalization, or say why it cannot be sent."""
        if message.channel is not Channel.EMAIL:
            return f"not an email message ({message.channel})"
        url = message.data.get("unsubscribe_url")
        if message.promotional and not url:
            return "promotional email without an unsubscribe URL"
        text = self._text(message)
        personalization: dict[str, Any] = {
            "to": [{"email": message.address}],
            "custom_args": {"notification_id": str(message.notification_id)},
        }
        substitutions = {}
        for tag, own in ((UNSUBSCRIBE_TAG, url), (PREFERENCES_TAG, message.data.get("preferences_url"))):
            if own and own in text:
                text = text.replace(own, tag)
                substitutions[tag] = own
        if substitutions:
            personalization["substitutions"] = substitutions
        if message.promotional and url:
            personalization["headers"] = _unsubscribe_headers(url)
        return _Prepared(index, (message.title, text, message.category, message.promotional), personalization)

    def bulk_payload(self, prepared: Sequence[_Prepared]) -> dict[str, Any]:
        """One request body for messages of one group: shared parts at the top, hers in her personalization."""
        title, text, category, promotional = prepared[0].group
        if any(p.group != prepared[0].group for p in prepared):
            raise ValueError("a bulk request takes one group (subject, text, category, promotional)")
        body: dict[str, Any] = {
            "personalizations": [p.personalization for p in prepared],
            "from": self._from,
            "subject": title,
            "content": [{"type": "text/plain", "value": text}],
            "categories": [category],
        }
        if promotional and self._group is not None:
            body["asm"] = {"group_id": self._group}
        return body

    def send_many(self, *, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send many emails in as few requests as SendGrid allows; one result per message, in order."""
        results: list[SendResult | None] = [None] * len(messages)
        groups: dict[tuple[str, str, str, bool], list[_Prepared]] = {}
        for index, message in enumerate(messages):
            prepared = self._prepare(index, message)
            if isinstance(prepared, str):
                results[index] = SendResult(outcome=Outcome.FAILED, error_code=INVALID_MESSAGE, detail=prepared)
            else:
                groups.setdefault(prepared.group, []).append(prepared)
        refusal: SendResult | None = None
        for members in groups.values():
            for chunk in _chunks(members, self.max_batch, [messages[p.index].address for p in members]):
                if refusal is not None:
                    for p in chunk:
                        results[p.index] = not_sent(refusal)
                    continue
                refusal = self._send_chunk(chunk, results)
        return complete(results)

    def _send_chunk(self, chunk: list[_Prepared], results: list[SendResult | None]) -> SendResult | None:
        """Send one group chunk (resending the rest after a 400 naming some); the refusal that stops the call."""
        pending = chunk
        for _ in range(MAX_REQUESTS_PER_CHUNK):
            request = self._client.build_request(
                "POST", self._url, json=self.bulk_payload(pending), headers={"authorization": f"Bearer {self._key}"}
            )
            try:
                response = send_with_blip_retry(self._client, request)
            except httpx.HTTPError as exc:
                network = SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
                for p in pending:
                    results[p.index] = network
                return network
            if response.status_code == 400:
                named, general = rejected_personalizations(response)
                if named and not general and max(named) < len(pending):
                    for position, why in named.items():
                        results[pending[position].index] = SendResult(
                            outcome=Outcome.FAILED, error_code="400", detail=why
                        )
                    pending = [p for position, p in enumerate(pending) if position not in named]
                    if not pending:
                        return None
                    continue  # SendGrid sent none of them: the rest go again, without who was named
                failed = SendResult(outcome=Outcome.FAILED, error_code="400", detail="; ".join(general)[:200])
                for p in pending:
                    results[p.index] = failed
                return None
            result = classify(response, self._clock.now())
            for p in pending:
                results[p.index] = result
            return result if result.outcome in (Outcome.RETRY, Outcome.CONFIG_ERROR) else None
        left = SendResult(
            outcome=Outcome.RETRY,
            error_code=NOT_SENT,
            detail=f"not sent: SendGrid rejected {MAX_REQUESTS_PER_CHUNK} requests for other recipients",
        )
        for p in pending:
            results[p.index] = left
        return None

    def send(self, *, message: OutboundMessage) -> SendResult:
        request = self._client.build_request(
            "POST", self._url, json=self.payload(message), headers={"authorization": f"Bearer {self._key}"}
        )
        try:
            response = send_with_blip_retry(self._client, request)
        except httpx.HTTPError as exc:
            return SendResult(outcome=Outcome.RETRY, error_code="network", detail=type(exc).__name__)
        return classify(response, self._clock.now())


def _unsubscribe_headers(url: str) -> dict[str, str]:
    """RFC 8058 one-click unsubscribe (and RFC 2369's link) for one recipient."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


def _chunks(members: list[_Prepared], size: int, addresses: list[str]) -> Iterable[list[_Prepared]]:
    """Requests of at most ``size``, each naming an address once (a repeat goes to the next request that lacks it)."""
    chunks: list[tuple[list[_Prepared], set[str]]] = []
    first_open = 0  # chunks before it are full
    for prepared, address in zip(members, addresses, strict=True):
        key = address.strip().casefold()
        for chunk, seen in chunks[first_open:]:
            if len(chunk) < size and key not in seen:
                chunk.append(prepared)
                seen.add(key)
                break
        else:
            chunks.append(([prepared], {key}))
        while first_open < len(chunks) and len(chunks[first_open][0]) >= size:
            first_open += 1
    return [chunk for chunk, _ in chunks]


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
