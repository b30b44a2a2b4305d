"""The care pause's rules, pure (facts in, verdict out), used at send time on both delivery paths.

What a pause does to each category (:data:`TREATMENT`): care-team messages and account notices always go;
marketing is suppressed; appointment reminders go unless the pause holds them; survey notices wait for the pause
to end or are cancelled, as their survey says (``survey_assignment.on_care_pause``).

A notification's reason is read by operators (status, campaign figures, the patient's activity), not by the
patient, but it is stored for as long as the notification is and shown to clients with the ``read`` scope and to
the marketing team in aggregate. So it never names the pause's reason code (a pregnancy loss, a NICU stay are
health information): it says only who asked for the pause, the care team or the patient, and until when.
Whoever needs the code reads the pause itself (``GET /v1/patients/{ref}/pause``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

from worker.categories import Category
from worker.errors import InvalidInput
from worker.models_consent import PauseReason

#: Every reason a pause writes starts so; a lift brings the notices it deferred forward by it.
REASON_PREFIX = "care pause"
#: A notice waiting on an indefinite pause, with no expiry of its own, is looked at again this often.
RECHECK = timedelta(days=1)


class SurveyOnPause(StrEnum):
    """A survey's notices during a pause: wait for it to end (checked again then), or be cancelled."""

    DEFER = "defer"
    CANCEL = "cancel"


class Treatment(StrEnum):
    GOES = "goes"
    SUPPRESSED = "suppressed"
    #: Goes unless the pause says ``hold_appointment_reminders``.
    APPOINTMENT = "appointment"
    #: Deferred or cancelled, per the survey's ``on_care_pause``.
    SURVEY = "survey"


TREATMENT: dict[Category, Treatment] = {
    Category.CARE_TEAM_MESSAGE: Treatment.GOES,
    Category.ACCOUNT_NOTICE: Treatment.GOES,
    Category.MARKETING: Treatment.SUPPRESSED,
    Category.APPOINTMENT_REMINDER: Treatment.APPOINTMENT,
    Category.SURVEY_REMINDER: Treatment.SURVEY,
}


@dataclass(frozen=True)
class Pause:
    """A patient's latest care-pause ledger entry, as read (a lift, or a pause that may have ended)."""

    paused: bool
    reason_code: PauseReason | None
    until: datetime | None
    hold_appointment_reminders: bool
    at: datetime

    def active(self, now: datetime) -> bool:
        """In force now: a pause (not a lift) whose end, if any, is still ahead. No job has to end it."""
        return self.paused and (self.until is None or self.until > now)


@dataclass(frozen=True)
class Hold:
    """What a pause does to one notification now; ``until`` is when a deferred one is checked again."""

    action: Literal["suppress", "defer", "cancel"]
    reason: str
    until: datetime | None = None


def who_asked(reason_code: PauseReason | None) -> str:
    """The only thing about a pause's reason an operator-facing text says (see the module docstring)."""
    return "patient request" if reason_code is PauseReason.PATIENT_REQUEST else "care team"


def describe(pause: Pause, zone: str) -> str:
    """``care pause (care team) until 2026-12-01 America/Chicago``: PHI-free, in the patient's own calendar."""
    head = f"{REASON_PREFIX} ({who_asked(pause.reason_code)})"
    if pause.until is None:
        return f"{head}, no end date"
    local = pause.until.astimezone(ZoneInfo(zone))
    when = f"{local:%Y-%m-%d}" if local.time() == time(0) else f"{local:%Y-%m-%d %H:%M}"
    return f"{head} until {when} {zone}"


def hold(
    category: Category,
    pause: Pause | None,
    now: datetime,
    *,
    zone: str,
    expires_at: datetime | None,
    survey_on_pause: str | None,
) -> Hold | None:
    """What the patient's pause does to a notification of ``category`` sent now; ``None``: it goes as usual."""
    if pause is None or not pause.active(now):
        return None
    treatment = TREATMENT[category]
    label = describe(pause, zone)
    if treatment is Treatment.GOES:
        return None
    if treatment is Treatment.SUPPRESSED:
        return Hold("suppress", label)
    if treatment is Treatment.APPOINTMENT:
        return Hold("suppress", f"{label}; appointment reminders held") if pause.hold_appointment_reminders else None
    if survey_on_pause == SurveyOnPause.CANCEL:
        return Hold("cancel", f"{label}; survey notices cancelled")
    # Wait for the end of the pause (or the notice's own expiry, or a re-check of an indefinite pause); a lift
    # brings it forward at once (worker.care_pause.store). Whatever wakes it, every rule is applied again then.
    ends = [t for t in (pause.until, expires_at) if t is not None]
    return Hold("defer", f"{label}; the survey notice waits", until=min(ends) if ends else now + RECHECK)


def parse_until(raw: str, zone: str, now: datetime) -> datetime:
    """``2026-12-01`` (the start of that day in the patient's zone: notices resume that day) or an instant with
    a UTC offset (``2026-12-01T15:00:00-06:00``); it must be in the future."""
    text = raw.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            until = datetime.combine(day, time(0), tzinfo=ZoneInfo(zone)).astimezone(UTC)
        else:
            until = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput("until", "must be a date (2026-12-01) or an instant with a UTC offset") from None
    if until.tzinfo is None:
        raise InvalidInput("until", "an instant must include a UTC offset (or give a date)")
    if not 2000 <= until.year <= 2200:
        raise InvalidInput("until", "must be between the years 2000 and 2200")
    if until <= now:
        raise InvalidInput("until", "must be in the future")
    return until.astimezone(UTC)
