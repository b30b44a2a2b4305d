"""Confirm by reply: which appointment types ask for it, and every answer a patient texted back.

``appointment_reply`` is append-only, written in the same transaction as the appointment's confirmation; the
outbound-webhook dispatcher reads it past a watermark to tell the platform (``appointment.confirmed``,
``appointment.reschedule_requested``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Integer, String
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import BigId


class ReplyKind(StrEnum):
    CONFIRMED = "confirmed"
    RESCHEDULE_REQUESTED = "reschedule_requested"


class AppointmentTypeSetting(SQLModel, table=True):
    """Per appointment type (the platform's own names, e.g. ``postpartum-visit``): whether its SMS reminders
    end with "Reply C to confirm, R to reschedule", and whether later reminders still go once confirmed."""

    __tablename__ = "appointment_type_setting"

    appointment_type: str = Field(sa_column=Column(String(64), primary_key=True))
    confirm_by_reply: bool = Field(default=False)
    remind_after_confirmation: bool = Field(default=True)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AppointmentReply(SQLModel, table=True):
    """One patient answer to a reminder, by text. Append-only with increasing ids (read past a watermark)."""

    __tablename__ = "appointment_reply"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    appointment_id: int = Field(
        sa_column=Column(Integer, ForeignKey("appointment.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    patient_id: int = Field(sa_column=Column(Integer, ForeignKey("patient.id", ondelete="CASCADE"), nullable=False))
    kind: ReplyKind = Field(sa_type=String(32))
    at: datetime = Field(sa_type=UTCDateTime)
