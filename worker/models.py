"""The data model. Instants are timezone-aware UTC (:class:`UTCDateTime`); no free text about a patient's
health is stored here: message content lives only in the secure messaging app."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from worker.categories import Category, Channel
from worker.db import UTCDateTime
from worker.states import State

#: 64-bit ids for the high-volume tables on PostgreSQL; SQLite only auto-increments a plain INTEGER key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _big_pk() -> Any:
    return Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))


def _notification_fk() -> Any:
    return Field(sa_column=Column(BigId, ForeignKey("notification.id", ondelete="CASCADE"), nullable=False, index=True))


class Patient(SQLModel, table=True):
    """A recipient. ``external_ref`` is the platform's opaque id; we keep no name or health data."""

    __tablename__ = "patient"

    id: int | None = Field(default=None, primary_key=True)
    external_ref: str = Field(max_length=128, unique=True, index=True)
    time_zone: str = Field(max_length=64)
    locale: str = Field(default="en", max_length=8)
    email: str | None = Field(default=None, max_length=320)
    phone_e164: str | None = Field(default=None, max_length=20)
    #: US state code for stricter state quiet-hour rules (e.g. FL, OK).
    us_state: str | None = Field(default=None, max_length=2)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class Device(SQLModel, table=True):
    """A push token. A token the provider reports dead is kept (``live=False``) for the audit trail."""

    __tablename__ = "device"

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", ondelete="CASCADE", index=True)
    platform: str = Field(max_length=16)  # ios | android | web
    token: str = Field(max_length=4096, unique=True)
    live: bool = Field(default=True)
    dead_reason: str | None = Field(default=None, max_length=200)
    dead_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_seen_at: datetime = Field(sa_type=UTCDateTime)


class Preference(SQLModel, table=True):
    """A patient's mute switch for one category on one channel. No row means the category's default (on)."""

    __tablename__ = "preference"
    __table_args__ = (UniqueConstraint("patient_id", "category", "channel", name="uq_preference"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", ondelete="CASCADE", index=True)
    category: Category = Field(sa_type=String(32))
    channel: Channel = Field(sa_type=String(16))
    enabled: bool
    updated_at: datetime = Field(sa_type=UTCDateTime)


class Notification(SQLModel, table=True):
    """One thing to tell one patient; the outbox row. Committed before anything is enqueued."""

    __tablename__ = "notification"
    __table_args__ = (
        # The relay and schedulers scan only rows that can still move; keep that scan index-only small.
        Index(
            "ix_notification_due",
            "state",
            "not_before",
            postgresql_where=text("state IN ('pending', 'deferred', 'retrying', 'sending')"),
            sqlite_where=text("state IN ('pending', 'deferred', 'retrying', 'sending')"),
        ),
        # The frequency caps read a patient's notifications in the capped categories at send time.
        Index(
            "ix_notification_capped",
            "patient_id",
            "category",
            "id",
            postgresql_where=text("category IN ('marketing', 'appointment_reminder', 'survey_reminder')"),
            sqlite_where=text("category IN ('marketing', 'appointment_reminder', 'survey_reminder')"),
        ),
        # Campaign stats and cancel: only campaign rows are in it.
        Index(
            "ix_notification_campaign",
            "campaign_id",
            "state",
            postgresql_where=text("campaign_id IS NOT NULL"),
            sqlite_where=text("campaign_id IS NOT NULL"),
        ),
    )

    id: int | None = _big_pk()
    #: Looked up through ``ix_notification_patient_created`` (patient_id first): no index of its own to write.
    patient_id: int = Field(foreign_key="patient.id", ondelete="CASCADE")
    category: Category = Field(sa_type=String(32))
    #: Channels asked for; ``None`` means the category's defaults.
    channels: list[str] | None = Field(default=None, sa_column=Column(JSON))
    #: Non-PHI references for rendering and re-checks (e.g. appointment id). Never message text.
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    idempotency_key: str = Field(max_length=200, unique=True)
    state: State = Field(default=State.PENDING, sa_type=String(16))
    reason: str | None = Field(default=None, max_length=500)
    not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempt_count: int = Field(default=0)
    #: When a broker message was last put out for it; ``None`` means the broker holds none.
    enqueued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The worker process holding the claim (``host:pid:nonce``); its heartbeat extends ``lease_until``.
    claimed_by: str | None = Field(default=None, max_length=96)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The marketing campaign that fanned it out (campaigns are never deleted, so no foreign key is needed).
    campaign_id: int | None = Field(default=None)


class NotificationEvent(SQLModel, table=True):
    """Every state transition with its time and reason: the on-call engineer's history of a notification."""

    __tablename__ = "notification_event"
    #: Append-only with increasing ids, never reused (on SQLite too, where a deleted top id otherwise would be):
    #: the /metrics rollup reads it past a watermark.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = _big_pk()
    notification_id: int = _notification_fk()
    from_state: State | None = Field(default=None, sa_type=String(16))
    to_state: State = Field(sa_type=String(16))
    reason: str | None = Field(default=None, max_length=500)
    at: datetime = Field(sa_type=UTCDateTime)


class DeliveryAttempt(SQLModel, table=True):
    """One provider call. ``target`` names a device id or a channel, never a phone number or address."""

    __tablename__ = "delivery_attempt"
    #: Append-only with increasing ids, never reused (see NotificationEvent): the /metrics rollup reads it too.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = _big_pk()
    notification_id: int = _notification_fk()
    channel: Channel = Field(sa_type=String(16))
    provider: str = Field(max_length=32)
    target: str = Field(max_length=64)
    device_id: int | None = Field(default=None, foreign_key="device.id", ondelete="SET NULL")
    outcome: str = Field(max_length=16)
    provider_ref: str | None = Field(default=None, max_length=255, index=True)
    error_code: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=500)
    started_at: datetime = Field(sa_type=UTCDateTime)
    duration_ms: int = Field(default=0)
