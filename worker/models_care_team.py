"""A care-team message's notice: its digest (which notice it folded into), read receipt and escalation.

One row per notice made for a platform message (``POST /v1/care-team-messages``), written in the same statement
as the notification (:mod:`worker.outbox.digest`). The notification row carries the message's id in its
idempotency key (``care_team_message:<message_id>``); this row carries only what the digest and the escalation
need, never any text. Deleting the notification (erasure, retention) deletes it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, String, text
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import BigId


class Escalation(StrEnum):
    """Where a notice's follow-up stands. Folded notices have none of their own: their head's covers them."""

    WAITING = "waiting"  # due at ``escalate_at`` unless she reads it first
    ESCALATED = "escalated"  # a follow-up notification was made (``escalation_id``)
    NOT_ESCALATED = "not_escalated"  # due, but no channel was left to try (``escalation_reason`` says why)
    CANCELLED = "cancelled"  # she read it first (before it was due, or before the follow-up went out)


class CareTeamMessage(SQLModel, table=True):
    __tablename__ = "care_team_message"
    __table_args__ = (
        # The digest's question at submit time: this patient's latest head notice (folded ones are not heads).
        Index(
            "ix_care_team_message_head",
            "patient_id",
            "created_at",
            postgresql_where=text("digest_of IS NULL"),
            sqlite_where=text("digest_of IS NULL"),
        ),
        # The escalation scan: only notices still waiting for their follow-up are in it.
        Index(
            "ix_care_team_message_due",
            "escalate_at",
            postgresql_where=text("escalate_at IS NOT NULL"),
            sqlite_where=text("escalate_at IS NOT NULL"),
        ),
    )

    notification_id: int = Field(
        sa_column=Column(
            BigId, ForeignKey("notification.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
        )
    )
    #: The notification's patient, copied for the digest's index. No foreign key of its own: the notification's
    #: cascades (an erased patient's notifications go, and this row with them), and the insert skips one more check.
    patient_id: int
    created_at: datetime = Field(sa_type=UTCDateTime)
    #: The trigger said ``urgent: true``: escalated after ``care_team.urgent_escalate_after`` instead.
    urgent: bool = Field(default=False)
    #: The head notice this one folded into; ``None`` for a notice that was sent on its own (a head).
    digest_of: int | None = Field(default=None, sa_type=BigId)
    #: When the platform said she read the message (the first report counts).
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: When the follow-up is due; ``None`` once settled (escalated, not escalated, cancelled) or for a folded one.
    escalate_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    escalation: Escalation | None = Field(default=None, sa_type=String(16))
    escalation_id: int | None = Field(default=None, sa_type=BigId)
    escalation_reason: str | None = Field(default=None, max_length=500)

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for a notification's report (``carenotify status``, ``GET /v1/notifications/{id}``)."""
        return {
            "urgent": self.urgent,
            "folded_into": self.digest_of,
            "read_at": self.read_at.isoformat() if self.read_at else None,
            "escalate_at": self.escalate_at.isoformat() if self.escalate_at else None,
            "escalation": str(self.escalation) if self.escalation else None,
            "escalation_id": self.escalation_id,
            "escalation_reason": self.escalation_reason,
        }
