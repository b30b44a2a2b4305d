"""Outbound webhooks: the endpoints operators register, the events they are told of, and each delivery.

Events are not written by the code that makes a change: they are derived from the append-only logs that change
already writes in its own transaction (``notification_event``, ``consent_event``, ``delivery_attempt``,
``appointment_reply``) by the scheduler's dispatcher, reading past a watermark (:mod:`worker.outbound.dispatch`).
Payloads hold ids, refs, categories, states and reason codes only: never contact data or text.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import BigId

#: Delivery states that can still move (the partial indexes hold only these).
OPEN_DELIVERY = "state IN ('pending', 'sending')"


class WebhookEndpoint(SQLModel, table=True):
    """A URL the platform asked to be told at, with the event types it wants and the secret we sign with.

    The secret must be usable to sign, so it is kept as issued (``whsec_...``); it is shown once, on creation.
    """

    __tablename__ = "webhook_endpoint"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2048)
    description: str | None = Field(default=None, max_length=200)
    events: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: One patient's events arrive in the order they happened (the next waits until the previous is delivered).
    ordered: bool = Field(default=False)
    secret: str = Field(max_length=128)
    enabled: bool = Field(default=True)
    #: ``operator``, ``gone`` (the receiver answered 410) or ``failing`` (nothing delivered for too long).
    disabled_reason: str | None = Field(default=None, max_length=16)
    disabled_detail: str | None = Field(default=None, max_length=300)
    disabled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Since when every delivery to it failed (``None``: the last one got through).
    failing_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: ``HTTP 500``, ``timeout``, ``connect error``: never the receiver's answer body.
    last_error: str | None = Field(default=None, max_length=200)
    #: A sender message is out for it until then (the dispatcher does not queue another meanwhile).
    kicked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class WebhookCursor(SQLModel, table=True):
    """How far the dispatcher has read each source log (one row, ``id = 1``; its lock serialises dispatchers)."""

    __tablename__ = "webhook_cursor"

    id: int = Field(default=1, sa_column=Column(Integer, primary_key=True, autoincrement=False))
    event_mark: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    consent_mark: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    attempt_mark: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reply_mark: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    dispatched_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WebhookEvent(SQLModel, table=True):
    """One event, as every endpoint receives it. ``event_key`` is the ``webhook-id``: derived from the source log
    row, so a retry and a replay carry the same id and a receiver can drop what it has seen."""

    __tablename__ = "webhook_event"

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    event_key: str = Field(max_length=64, unique=True)
    type: str = Field(max_length=48)
    #: Erasing the patient deletes her events (and so their deliveries).
    patient_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("patient.id", ondelete="CASCADE"), nullable=True, index=True)
    )
    occurred_at: datetime = Field(sa_type=UTCDateTime)
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event to one endpoint: ``pending`` -> ``sending`` (leased) -> ``delivered`` | ``failed`` (gave up)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery"),
        Index(
            "ix_webhook_delivery_due",
            "endpoint_id",
            "next_attempt_at",
            postgresql_where=text(OPEN_DELIVERY),
            sqlite_where=text(OPEN_DELIVERY),
        ),
        Index(
            "ix_webhook_delivery_order",
            "endpoint_id",
            "patient_id",
            "id",
            postgresql_where=text(OPEN_DELIVERY),
            sqlite_where=text(OPEN_DELIVERY),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    endpoint_id: int = Field(
        sa_column=Column(Integer, ForeignKey("webhook_endpoint.id", ondelete="CASCADE"), nullable=False)
    )
    event_id: int = Field(
        sa_column=Column(BigId, ForeignKey("webhook_event.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    #: Copied from the event: what per-patient ordering waits on.
    patient_id: int | None = Field(default=None)
    state: str = Field(default="pending", sa_type=String(16))
    attempts: int = Field(default=0)
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=200)
    #: Retries stop this long after it (``webhooks.max_age_hours``); a replay starts it again.
    created_at: datetime = Field(sa_type=UTCDateTime)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
