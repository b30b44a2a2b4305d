"""Marketing campaigns: one message (a PHI-free template) to an audience chosen by non-health attributes."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, String
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime


class CampaignState(StrEnum):
    DRAFT = "draft"  # created, may still be edited or launched
    SCHEDULED = "scheduled"  # launched for ``launch_at``; the scheduler fans it out when that comes
    FANNING_OUT = "fanning_out"  # notification rows are being created, chunk by chunk
    LAUNCHED = "launched"  # every recipient has a notification row; delivery is under way or done
    CANCELLED = "cancelled"  # nothing more is sent; open notifications were cancelled


class Campaign(SQLModel, table=True):
    """A campaign and its fan-out progress.

    ``audience`` is a structured filter over non-health attributes (locale, US state, time zone, sign-up
    date), never free text: an audience can't be "patients with condition X". ``excluded`` counts, by reason,
    the audience members who got no notification at fan-out (no consent, capped, unreachable, ...).
    """

    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=120)
    template: str = Field(max_length=64)
    audience: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    channels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: CampaignState = Field(default=CampaignState.DRAFT, sa_type=String(16))
    #: When fan-out starts; ``None`` until launched.
    launch_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: The end of the send window: what has not gone out by then expires instead of arriving late.
    ends_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Fan-out walks patients by id; the last id done, so a crashed fan-out resumes where it stopped.
    fanout_cursor: int = Field(default=0)
    audience_size: int = Field(default=0)
    queued: int = Field(default=0)
    excluded: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    fanout_started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    fanout_finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
