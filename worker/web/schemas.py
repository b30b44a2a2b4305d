"""Request and response bodies. Strict (unknown fields refused) and bounded, so the OpenAPI schema is exact.

Free text is limited to printable characters: an identifier with a NUL byte or a newline is a caller's bug,
and PostgreSQL would refuse it anyway (as a 500 instead of a 422 naming the field).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from worker.categories import Category, Channel
from worker.patients import is_known_zone

#: An opaque identifier from the platform (patient ref, message id): printable ASCII without spaces.
REF_PATTERN = r"^[!-~]{1,128}$"
Ref = Annotated[str, StringConstraints(pattern=REF_PATTERN)]


def _canonical_zone(value: str) -> str:
    if not is_known_zone(value):
        raise ValueError("not a known IANA time zone (e.g. America/Chicago)")
    return value


#: A canonical IANA zone: not ``localtime``, ``Factory``, nor the ``posix/`` and ``right/`` copies.
TimeZoneName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+\-/]{1,64}$"), AfterValidator(_canonical_zone)]
#: local@domain.tld; the full check (dot-atom local part, domain labels, a top-level name) is the service's.
Email = Annotated[
    str,
    StringConstraints(pattern=r"^[^\s@\x00-\x1f\x7f]{1,64}@[^\s@\x00-\x1f\x7f]{1,188}\.[^\s@.\x00-\x1f\x7f]{2,63}$"),
]
Phone = Annotated[str, StringConstraints(pattern=r"^[0-9+()\-. ]{3,32}$")]
Token = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,4096}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientIn(Strict):
    """Create or update a patient by the platform's reference. Contact data is used only to deliver."""

    external_ref: Ref
    time_zone: TimeZoneName = Field(description="IANA zone, e.g. America/Chicago")
    locale: Literal["en", "es"] = "en"
    email: Email | None = None
    phone: Phone | None = Field(default=None, description="US number or +country E.164")
    us_state: Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")] | None = None


class PatientOut(BaseModel):
    patient_id: int
    external_ref: str


class DeviceIn(Strict):
    """A push token from the app; registering a known token moves it to this patient and revives it."""

    platform: Literal["ios", "android", "web"]
    token: Token


class DeviceOut(BaseModel):
    device_id: int
    patient_id: int


class CareTeamMessageIn(Strict):
    """The care team wrote in the secure app. Only the fact is sent on: the text never leaves the app."""

    patient_ref: Ref
    #: The secure app's id of the message: one notice per message however often this is posted.
    message_id: Ref
    channels: list[Channel] | None = Field(default=None, min_length=1, max_length=4)
    #: Unread for ``care_team.urgent_escalate_after`` (default 30 min) instead of 4 h brings one follow-up notice.
    urgent: bool = False


class Submission(BaseModel):
    notification_id: int
    #: False when this trigger had been received before (no second notification).
    created: bool


class HistoryItem(BaseModel):
    at: datetime
    from_: str | None = Field(alias="from")
    to: str
    reason: str | None


class ProviderCall(BaseModel):
    at: datetime
    channel: str
    provider: str
    target: str
    outcome: str
    error_code: str | None
    provider_ref: str | None
    detail: str | None
    duration_ms: int


class CareTeamStatus(BaseModel):
    """A care-team message's notice: the notice it folded into, when she read it, its follow-up and why."""

    urgent: bool
    folded_into: int | None
    read_at: datetime | None
    escalate_at: datetime | None
    escalation: str | None
    escalation_id: int | None
    escalation_reason: str | None


class ReadReceiptOut(BaseModel):
    """A read receipt taken (or taken before: ``first`` is false and ``read_at`` is the first report's)."""

    message_id: str
    notification_id: int
    read_at: datetime
    first: bool
    #: The follow-up now: ``cancelled``, ``escalated`` (already sent or sending), ``not_escalated``, or null.
    escalation: str | None
    escalation_id: int | None


class NotificationStatus(BaseModel):
    """Why a notification went, was held back, or failed."""

    id: int
    patient_id: int
    category: str
    state: str
    reason: str | None
    attempts: int
    not_before: datetime | None
    created_at: datetime
    finished_at: datetime | None
    history: list[HistoryItem]
    provider_calls: list[ProviderCall]
    #: Only for a care-team message's notice.
    care_team: CareTeamStatus | None = None


def _plausible(value: datetime) -> datetime:
    # Far-future instants overflow date arithmetic (reminder offsets) and are never a real appointment.
    if not 2000 <= value.year <= 2200:
        raise ValueError("must be between the years 2000 and 2200")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_plausible)]
SurveyKey = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,64}$")]


#: A kind of visit, e.g. postpartum-visit (a name the platform chooses; never a diagnosis).
AppointmentType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class AppointmentIn(Strict):
    """An appointment as the platform knows it; reminders are planned from ``starts_at`` (e.g. 24 h, 2 h before)."""

    appointment_ref: Ref
    patient_ref: Ref
    starts_at: Instant = Field(description="With a UTC offset, e.g. 2026-03-10T15:30:00-05:00")
    appointment_type: AppointmentType | None = Field(
        default=None, description="The platform's name for the kind of visit (confirm by reply is set per type)"
    )


class AppointmentTypeIn(Strict):
    """Whether this type's SMS reminders end with "Reply C to confirm, R to reschedule"."""

    confirm_by_reply: bool
    remind_after_confirmation: bool = Field(True, description="False: no reminder goes once the patient confirmed")


class AppointmentTypeOut(BaseModel):
    appointment_type: str
    confirm_by_reply: bool
    remind_after_confirmation: bool


class RescheduleIn(Strict):
    starts_at: Instant


class AppointmentOut(BaseModel):
    appointment_id: int
    appointment_ref: str


class SurveyIn(Strict):
    """A survey to fill in: a first notice at ``first_send_at`` (default now) and ``reminders`` more."""

    assignment_ref: Ref
    patient_ref: Ref
    survey_key: SurveyKey = Field(description="Which survey, e.g. postpartum-2w (an id, never a question)")
    first_send_at: Instant | None = None
    reminders: int | None = Field(default=None, ge=0, le=10)
    interval_days: int | None = Field(default=None, ge=1, le=60)
    on_care_pause: Literal["defer", "cancel"] | None = Field(
        default=None,
        description="While the patient's care is paused: wait for the pause to end, or cancel "
        "(default: the deployment's care_pause.survey_default, defer)",
    )


class SurveyOut(BaseModel):
    survey_assignment_id: int
    assignment_ref: str


class PreferenceChangeIn(Strict):
    category: Category
    channel: Channel
    enabled: bool


class PreferencesIn(Strict):
    """Switches to flip; the others stay as they are. Applied all together or not at all."""

    changes: list[PreferenceChangeIn] = Field(min_length=1, max_length=40)
    #: ``app``: the patient flipped it in the app and the platform relays it; ``api``: the platform itself (staff).
    via: Literal["app", "api"] = "app"
    #: Required to turn SMS marketing on: where the patient's written consent is kept (e.g. a form id).
    sms_consent_evidence: Annotated[str, StringConstraints(pattern=r"^[ -~]{1,200}$")] | None = None


class PreferencesOut(BaseModel):
    """category -> channel -> on/off, defaults filled in."""

    preferences: dict[str, dict[str, bool]]


CampaignName = Annotated[str, StringConstraints(pattern=r"^[ -~]{1,120}$", strip_whitespace=True)]


class AudienceIn(Strict):
    """Who gets it, by attributes that say nothing about health. Each list given narrows the audience."""

    locales: list[Literal["en", "es"]] | None = Field(default=None, min_length=1, max_length=2)
    us_states: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$")]] | None = Field(
        default=None, min_length=1, max_length=60
    )
    time_zones: list[TimeZoneName] | None = Field(default=None, min_length=1, max_length=100)
    joined_after: Instant | None = None
    joined_before: Instant | None = None


class CampaignIn(Strict):
    """A marketing campaign: a reviewed template (never free text), channels, and an audience filter."""

    name: CampaignName = Field(description="An internal label for the marketing team; never patient data")
    template: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,64}$")] = Field(
        description="A marketing template key, e.g. news, new_service, class_invite, app_update"
    )
    channels: list[Literal["push", "email", "sms", "inapp"]] = Field(min_length=1, max_length=4)
    audience: AudienceIn = Field(default_factory=AudienceIn)


class LaunchIn(Strict):
    """When to start (default now) and when the send window closes (default 48 h later)."""

    launch_at: Instant | None = None
    ends_at: Instant | None = None


class CampaignOut(BaseModel):
    """A campaign and its figures so far."""

    campaign_id: int
    name: str
    template: str
    channels: list[str]
    audience: dict[str, object]
    state: str
    launch_at: datetime | None
    ends_at: datetime | None
    fanout_started_at: datetime | None
    fanout_finished_at: datetime | None
    #: Patients the filter matched; ``queued`` got a notification, ``excluded`` did not, by reason.
    audience_size: int
    queued: int
    excluded: dict[str, int]
    by_state: dict[str, int]
    accepted_by_channel: dict[str, int]
    top_reasons: dict[str, int]
