"""Who may call the HTTP API, and what each POST already answered (Idempotency-Key replays).

An API key is shown once when created and stored only as a SHA-256 digest: the key is 256 random bits, so a
plain (unsalted, fast) hash is as safe as a slow KDF here, and a leaked table gives no usable key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import BigId


class ApiClient(SQLModel, table=True):
    """A caller of the API (the care platform, an internal tool): what it may do, and its keys (:class:`ApiKey`).

    Idempotency-Key records belong to the client, not to a key, so a rotated key replays its predecessor's answers.
    """

    __tablename__ = "api_client"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    #: What it may do: scope names, comma-separated, sorted (``worker.web.auth.Scope``).
    scopes: str = Field(max_length=200)
    created_at: datetime = Field(sa_type=UTCDateTime)
    #: Set when the client is revoked: none of its keys is accepted any more.
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ApiKey(SQLModel, table=True):
    """One key of a client. A client may hold several at once, so a key is rotated without a new client."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    client_id: int = Field(
        sa_column=Column(Integer, ForeignKey("api_client.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    #: Public, non-secret prefix of the key, used to find the row before the constant-time digest compare.
    key_id: str = Field(max_length=16, unique=True, index=True)
    key_sha256: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class IdempotencyRecord(SQLModel, table=True):
    """The answer given to one (client, Idempotency-Key): a replay gets it again, a different body is refused.

    ``status_code`` is NULL while the first request is still being handled, so a concurrent duplicate can be
    told to retry instead of running twice.
    """

    __tablename__ = "idempotency_record"
    __table_args__ = (UniqueConstraint("client_id", "key", name="uq_idempotency_client_key"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    client_id: int = Field(sa_column=Column(Integer, ForeignKey("api_client.id", ondelete="CASCADE"), nullable=False))
    key: str = Field(max_length=200)
    method: str = Field(max_length=8)
    path: str = Field(max_length=500)
    request_sha256: str = Field(max_length=64)
    status_code: int | None = Field(default=None)
    #: The JSON answer, byte for byte as first sent.
    response_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_type=UTCDateTime)


class WebhookReceipt(SQLModel, table=True):
    """A provider callback already acted on. Signatures prove who sent a request, not that it is the first copy:
    a replayed (or retried) callback finds its receipt here and changes nothing."""

    __tablename__ = "webhook_receipt"
    __table_args__ = (UniqueConstraint("provider", "dedupe_key", name="uq_webhook_receipt"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    #: ``twilio_sms``, ``twilio_status``, ``sendgrid``.
    provider: str = Field(max_length=16)
    #: The provider's own id for the event (MessageSid + status, sg_event_id).
    dedupe_key: str = Field(max_length=200)
    received_at: datetime = Field(sa_type=UTCDateTime)
