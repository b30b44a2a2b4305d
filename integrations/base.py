"""The provider port: what every adapter takes and the one typed result it returns.

An adapter maps each provider answer to exactly one :class:`Outcome` in one place. It never raises for a
provider answer; it raises only for programming errors. Network failures become ``RETRY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

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


def mask(address: str) -> str:
    """Shorten an address/token to something loggable that still tells two apart."""
    if len(address) <= 6:
        return "***"
    return f"{address[:3]}…{address[-3:]}"
