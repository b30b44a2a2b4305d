"""The consent ledger: append-only. Current consent is the latest event per (patient, channel, category)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, ForeignKey, Index, Integer, String
from sqlmodel import Field, SQLModel

from worker.db import UTCDateTime
from worker.models import BigId


class ConsentSource(StrEnum):
    APP = "app"  # the patient, in the app
    API = "api"  # the care platform, on the patient's behalf
    SMS_KEYWORD = "sms_keyword"  # STOP / START / plain-language revocation by text
    UNSUBSCRIBE_LINK = "unsubscribe_link"  # email link or RFC 8058 one-click
    PROVIDER_REPORT = "provider_report"  # Twilio 21610, SendGrid unsubscribe/spamreport
    OPERATOR = "operator"
    PREFERENCE_PAGE = "preference_page"  # the patient, on the page her signed email / SMS HELP link opens


class ConsentEvent(SQLModel, table=True):
    """One change of consent. Never updated or deleted (except by erasure of the patient).

    ``category`` NULL means every category on that channel (e.g. SMS STOP stops all texts from the sender).
    ``detail`` says how, without personal data (e.g. "keyword STOP", "twilio 21610", "written consent form v3").
    """

    __tablename__ = "consent_event"
    #: Ids are never reused, on SQLite too (migration 0065): the outbound webhooks read the ledger past a watermark.
    __table_args__ = (
        Index("ix_consent_event_lookup", "patient_id", "channel", "category", "id"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    patient_id: int = Field(sa_column=Column(Integer, ForeignKey("patient.id", ondelete="CASCADE"), nullable=False))
    channel: str = Field(sa_type=String(16))
    category: str | None = Field(default=None, sa_type=String(32))
    granted: bool
    source: ConsentSource = Field(sa_type=String(32))
    actor: str = Field(max_length=128)
    detail: str | None = Field(default=None, max_length=300)
    at: datetime = Field(sa_type=UTCDateTime)


class PauseReason(StrEnum):
    """Why the care team paused a patient's non-essential notices: a fixed list, never free text.

    Several are health information (a loss, a NICU stay): they are stored here and shown to API clients holding
    the ``preferences`` or ``read`` scope, but never logged, never put into a notification's reason (see
    :mod:`worker.care_pause.rules`), and never in anything the patient receives.
    """

    PREGNANCY_LOSS = "pregnancy_loss"  # miscarriage, stillbirth
    INFANT_LOSS = "infant_loss"
    NICU_STAY = "nicu_stay"  # the baby is in neonatal intensive care
    MATERNAL_HOSPITAL_STAY = "maternal_hospital_stay"  # she is readmitted
    PATIENT_REQUEST = "patient_request"  # she asked for a break
    CLINICAL_TEAM_JUDGEMENT = "clinical_team_judgement"  # the care team decided, no reason recorded here


class CarePauseEvent(SQLModel, table=True):
    """One pause (set or changed) or lift of a patient's care pause: part of the consent ledger, append-only.

    The patient's current pause is her latest event, if it is a pause whose ``until`` has not passed: an expired
    pause stops applying by itself, no job has to run. ``until`` NULL on a pause means indefinite.
    """

    __tablename__ = "care_pause_event"
    __table_args__ = (Index("ix_care_pause_event_patient", "patient_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(BigId, primary_key=True, autoincrement=True))
    patient_id: int = Field(sa_column=Column(Integer, ForeignKey("patient.id", ondelete="CASCADE"), nullable=False))
    #: True: paused (from ``at`` until ``until``); False: lifted.
    paused: bool
    reason_code: PauseReason | None = Field(default=None, sa_type=String(32))
    until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Appointment reminders are held too (by default they still go).
    hold_appointment_reminders: bool = False
    source: ConsentSource = Field(sa_type=String(32))
    actor: str = Field(max_length=128)
    at: datetime = Field(sa_type=UTCDateTime)
