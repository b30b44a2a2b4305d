"""Appointments and survey assignments: the facts reminders are planned from and re-checked against."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime


class AppointmentStatus(StrEnum):
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


class Appointment(SQLModel, table=True):
    """``version`` grows with every reschedule; a reminder planned for an older version is stale."""

    __tablename__ = "appointment"

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", ondelete="CASCADE", index=True)
    external_ref: str = Field(max_length=128, unique=True)
    starts_at: datetime = Field(sa_type=UTCDateTime)
    status: AppointmentStatus = Field(default=AppointmentStatus.SCHEDULED, sa_type=String(16))
    version: int = Field(default=1)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    #: The platform's name for the kind of visit; settings per type in ``appointment_type_setting``.
    appointment_type: str | None = Field(default=None, max_length=64)
    #: The patient's last answer by text (``confirmed`` | ``reschedule_requested``), and when; reset by a reschedule.
    confirmation: str | None = Field(default=None, max_length=32)
    confirmation_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SurveyAssignment(SQLModel, table=True):
    """A survey to fill in (e.g. "2 weeks postpartum check-in"): a first notice and up to N reminders."""

    __tablename__ = "survey_assignment"

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", ondelete="CASCADE", index=True)
    external_ref: str = Field(max_length=128, unique=True)
    survey_key: str = Field(max_length=64)
    first_send_at: datetime = Field(sa_type=UTCDateTime)
    reminders: int = Field(default=2)
    interval_days: int = Field(default=3)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    #: What its notices do while the patient's care is paused: ``defer`` (wait for the pause to end, then be
    #: checked again) or ``cancel``.
    on_care_pause: str = Field(default="defer", sa_type=String(8))
