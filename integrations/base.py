"""The provider port: what every adapter takes and the one typed result it returns.

An adapter maps each provider answer to exactly one :class:`Outcome` in one place. It never raises for a
provider answer; it raises only for programming errors. Network failures become ``RETRY``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, TypeGuard

from worker.categories import Channel


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # the provider took it
    RETRY = "retry"  # transient: try again (after ``retry_after`` if the provider said)
    FAILED = "failed"  # permanent for this request: never retried
    TOKEN_DEAD = "token_dead"  # prune that device; the notification goes on elsewhere
    OPTED_OUT = "opted_out"  # the provider says the recipient opted out: record consent, stop that channel
    CONFIG_ERROR = "config_error"  # our credentials/config are wrong: alert, pause the provider, keep the message


@dataclass(frozen=True, kw_only=True)
class OutboundMessage:
    """A rendered, PHI-free message for one target on one channel."""

    notification_id: int
    idempotency_key: str
    channel: Channel
    category: str
    #: Device token (push), E.164 number (sms), address (email) or patient ref (in-app).
    address: str
    #: ``ios`` / ``android`` / ``web`` for push, else ``None``.
    platform: str | None = None
    title: str
    body: str
    #: Extra non-PHI fields for the provider (deep-link ids, unsubscribe URL).
    data: dict[str, str] = field(default_factory=dict)
    #: Commercial messages need unsubscribe headers/STOP text.
    promotional: bool = False


@dataclass(frozen=True, kw_only=True)
class SendResult:
    """What came of one provider call."""

    outcome: Outcome
    provider_ref: str | None = None
    error_code: str | None = None
    #: A short, PHI-free reason for the on-call engineer.
    detail: str | None = None
    #: Seconds the provider asked us to wait (Retry-After, X-RateLimit-Reset), if it said.
    retry_after: float | None = None


class Provider(Protocol):
    """A delivery provider for one channel."""

    name: str
    channel: Channel

    def send(self, *, message: OutboundMessage) -> SendResult: ...


#: ``error_code`` of a :meth:`BulkProvider.send_many` result whose message was never put on the wire: an earlier
#: request of the same call was refused as a whole (429, 5xx, 401/403, network), so the rest of the call was not
#: sent. Its outcome and ``retry_after`` are the refusal's; it called no provider, so it is not an attempt.
NOT_SENT = "not_sent"


class BulkProvider(Provider, Protocol):
    """A provider that can also take many messages in one call (SendGrid personalizations, the in-app batch).

    ``send_many`` returns exactly one :class:`SendResult` per message, in the order given, and never raises for a
    provider answer (only for programming errors). Whatever the call needs is its own business: it groups what
    cannot share a request, and splits into requests of at most ``max_batch`` recipients.

    - A per-recipient answer maps like :meth:`Provider.send`'s answer for that recipient would.
    - A whole-request refusal (429, 5xx, 401/403, a network error) gives every message of that request the same
      outcome, error code and ``retry_after`` (``Retry-After`` / ``X-RateLimit-Reset``) as ``send`` would; the
      call then stops, and every message it had not sent yet gets that outcome too, with ``error_code``
      :data:`NOT_SENT` (no attempt: count it like a paused circuit, not like a provider answer).
    - Accepted messages carry the provider's reference (for SendGrid: the request's ``X-Message-Id``, shared by
      every recipient of that request; events come back per recipient with our ``notification_id``).
    """

    #: The most recipients one request takes; callers get best throughput passing up to this many at once.
    max_batch: int

    def send_many(self, *, messages: Sequence[OutboundMessage]) -> list[SendResult]: ...


def supports_bulk(provider: object) -> TypeGuard[BulkProvider]:
    """Whether ``provider`` offers :meth:`BulkProvider.send_many` (with a usable ``max_batch``); narrows the type."""
    max_batch = getattr(provider, "max_batch", None)
    return (
        callable(getattr(provider, "send_many", None))
        and callable(getattr(provider, "send", None))
        and isinstance(max_batch, int)
        and not isinstance(max_batch, bool)
        and max_batch > 0
    )


def not_sent(refusal: SendResult) -> SendResult:
    """The result of a message a bulk call did not send because ``refusal`` stopped it (see :data:`NOT_SENT`)."""
    return SendResult(
        outcome=refusal.outcome,
        error_code=NOT_SENT,
        detail=f"not sent: an earlier request of this batch got {refusal.error_code}",
        retry_after=refusal.retry_after,
    )


def complete(results: Sequence[SendResult | None]) -> list[SendResult]:
    """A bulk call's results, checked: every message has one (a gap is a programming error)."""
    out: list[SendResult] = []
    for result in results:
        if result is None:
            raise AssertionError("send_many left a message without a result")
        out.append(result)
    return out


def mask(address: str) -> str:
    """Shorten an address/token to something loggable that still tells two apart."""
    if len(address) <= 6:
        return "***"
    return f"{address[:3]}…{address[-3:]}"
