"""Operator console sessions, and the indexes that make a patient's activity and provider health cheap to read.

A session is a random token held in an HttpOnly cookie; only its SHA-256 digest is stored, so a copy of the table
signs nobody in. It belongs to the API key that opened it (a revoked key or a client losing the ``console`` scope
ends it at the next request) and carries its own CSRF token, checked on every form post.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import DeliveryAttempt, Notification
from worker.models_consent import ConsentEvent


class ConsoleSession(SQLModel, table=True):
    """One signed-in operator. Ended by sign-out, ``console.idle_timeout_minutes`` without a request, or
    ``console.max_session_hours`` after sign-in, whichever comes first."""

    __tablename__ = "console_session"

    id: int | None = Field(default=None, primary_key=True)
    #: SHA-256 of the cookie's token.
    token_sha256: str = Field(max_length=64, unique=True)
    client_id: int = Field(
        sa_column=Column(Integer, ForeignKey("api_client.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    #: The public id of the API key signed in with: revoking that key ends the session.
    key_id: str = Field(max_length=16)
    #: Sent back in every form of the session and compared on every POST.
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    last_seen_at: datetime = Field(sa_type=UTCDateTime)


# A patient's activity, newest first, paged by (time, id): one short index range per page, whatever the table size.
Index(
    "ix_notification_patient_created",
    Notification.__table__.c.patient_id,  # type: ignore[attr-defined]
    Notification.__table__.c.created_at,  # type: ignore[attr-defined]
    Notification.__table__.c.id,  # type: ignore[attr-defined]
)
Index(
    "ix_consent_event_patient_at",
    ConsentEvent.__table__.c.patient_id,  # type: ignore[attr-defined]
    ConsentEvent.__table__.c.at,  # type: ignore[attr-defined]
    ConsentEvent.__table__.c.id,  # type: ignore[attr-defined]
)
# Provider health: one provider's calls of the last hour, and its latest calls (the circuit as the log shows it).
Index(
    "ix_delivery_attempt_provider_started",
    DeliveryAttempt.__table__.c.provider,  # type: ignore[attr-defined]
    DeliveryAttempt.__table__.c.started_at,  # type: ignore[attr-defined]
)
