"""Quiet hours in the patient's own zone, across DST changes (pure functions; the clock is data)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.categories import Category
from worker.delivery.policy import decide
from worker.models import Notification, Patient
from worker.quiet_hours import allowed_window, next_allowed_instant

NY = ZoneInfo("America/New_York")
WINDOW = (time(8, 0), time(21, 0))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _patient(zone: str = "America/New_York") -> Patient:
    return Patient(id=1, external_ref="p", time_zone=zone, created_at=T0, updated_at=T0)


@pytest.mark.parametrize(
    ("now_utc", "expected_utc"),
    [
        # 14:00 New York (EST, UTC-5): inside the window.
        (datetime(2026, 1, 15, 19, 0, tzinfo=UTC), datetime(2026, 1, 15, 19, 0, tzinfo=UTC)),
        # 22:30 New York: next 08:00 local = 13:00 UTC.
        (datetime(2026, 1, 16, 3, 30, tzinfo=UTC), datetime(2026, 1, 16, 13, 0, tzinfo=UTC)),
        # 06:00 New York: later the same morning.
        (datetime(2026, 1, 16, 11, 0, tzinfo=UTC), datetime(2026, 1, 16, 13, 0, tzinfo=UTC)),
        # Night before spring-forward (8 March 2026): 08:00 EDT is 12:00 UTC, not 13:00.
        (datetime(2026, 3, 8, 3, 0, tzinfo=UTC), datetime(2026, 3, 8, 12, 0, tzinfo=UTC)),
        # Night before fall-back (1 November 2026): 08:00 EST is 13:00 UTC.
        (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 13, 0, tzinfo=UTC)),
        # 20:59 local is allowed, 21:00 is not.
        (datetime(2026, 1, 16, 1, 59, tzinfo=UTC), datetime(2026, 1, 16, 1, 59, tzinfo=UTC)),
        (datetime(2026, 1, 16, 2, 0, tzinfo=UTC), datetime(2026, 1, 16, 13, 0, tzinfo=UTC)),
        # Spring-forward evening: 21:00 EDT is 01:00 UTC (EST would say 02:00).
        (datetime(2026, 3, 9, 1, 0, tzinfo=UTC), datetime(2026, 3, 9, 12, 0, tzinfo=UTC)),
    ],
)
def test_next_allowed_instant_in_new_york(now_utc: datetime, expected_utc: datetime) -> None:
    assert next_allowed_instant(now_utc, NY, *WINDOW) == expected_utc


def test_window_start_inside_a_dst_gap_moves_forward() -> None:
    # A 02:30 window start does not exist on spring-forward day: it becomes 03:30 EDT (07:30 UTC).
    now = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert next_allowed_instant(now, NY, time(2, 30), time(21, 0)) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_window_boundary_in_the_repeated_hour_counts_once() -> None:
    # Fall-back day (1 November 2026): 01:00-01:59 happens twice. A window ending 01:30 closes at the first
    # 01:30 (EDT, 05:30 UTC); the second 01:15 (EST, 06:15 UTC) is outside, waiting for the next day's start.
    start, end = time(0, 30), time(1, 30)
    assert next_allowed_instant(datetime(2026, 11, 1, 5, 15, tzinfo=UTC), NY, start, end) == datetime(
        2026, 11, 1, 5, 15, tzinfo=UTC
    )
    assert next_allowed_instant(datetime(2026, 11, 1, 6, 15, tzinfo=UTC), NY, start, end) == datetime(
        2026, 11, 2, 5, 30, tzinfo=UTC
    )
    # A window starting at 01:30 opens at its first occurrence.
    assert next_allowed_instant(datetime(2026, 11, 1, 4, 0, tzinfo=UTC), NY, time(1, 30), time(21, 0)) == datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )


ZONES = ["America/New_York", "America/Chicago", "America/Los_Angeles", "Pacific/Honolulu", "Europe/London"]


@given(
    now=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)),
    zone=st.sampled_from(ZONES),
)
def test_next_allowed_instant_is_inside_the_window_and_never_early(now: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    opens = next_allowed_instant(now, tz, *WINDOW)
    local = opens.astimezone(tz)
    assert opens >= now and opens - now <= timedelta(hours=12)  # 12 h across a fall-back night
    assert WINDOW[0] <= local.time() < WINDOW[1]
    if opens > now:  # deferred: lands exactly on the window's start, and nothing in between was allowed
        assert local.time() == WINDOW[0]
        assert not WINDOW[0] <= now.astimezone(tz).time() < WINDOW[1]


def test_windows_per_category() -> None:
    patient = _patient()
    assert allowed_window(Category.CARE_TEAM_MESSAGE, patient, WINDOW) is None
    assert allowed_window(Category.ACCOUNT_NOTICE, patient, WINDOW) is None
    assert allowed_window(Category.APPOINTMENT_REMINDER, patient, WINDOW) == WINDOW
    assert allowed_window(Category.SURVEY_REMINDER, patient, WINDOW) == WINDOW
    assert allowed_window(Category.MARKETING, patient, WINDOW) == (time(8, 0), time(20, 0))
    assert allowed_window(Category.MARKETING, patient, (time(9, 0), time(19, 0))) == (time(9, 0), time(19, 0))


def _notification(category: Category, expires_at: datetime | None = None) -> Notification:
    return Notification(
        id=1,
        patient_id=1,
        category=category,
        context={},
        idempotency_key="k",
        state="sending",
        expires_at=expires_at,
        created_at=T0,
        updated_at=T0,
    )


def test_decide_defers_what_can_wait_and_sends_what_cannot() -> None:
    night = datetime(2026, 1, 16, 4, 0, tzinfo=UTC)  # 23:00 New York
    patient = _patient()
    kwargs = {"patient": patient, "preferences": [], "devices": [], "now": night, "quiet_window": WINDOW}
    held = decide(notification=_notification(Category.SURVEY_REMINDER), **kwargs)  # type: ignore[arg-type]
    assert held.defer_until == datetime(2026, 1, 16, 13, 0, tzinfo=UTC)
    assert held.defer_reason == "quiet hours: held until 08:00 America/New_York"
    urgent = decide(notification=_notification(Category.CARE_TEAM_MESSAGE), **kwargs)  # type: ignore[arg-type]
    assert urgent.defer_until is None and urgent.expire is None
    too_late = decide(
        notification=_notification(Category.APPOINTMENT_REMINDER, expires_at=night + timedelta(hours=5)),
        **kwargs,  # type: ignore[arg-type]
    )
    assert too_late.expire == "quiet hours last until after it stops being useful"
    # Same instant, a patient in Honolulu (18:00 local): inside her window.
    honolulu = decide(
        notification=_notification(Category.SURVEY_REMINDER),
        **{**kwargs, "patient": _patient("Pacific/Honolulu")},  # type: ignore[arg-type]
    )
    assert honolulu.defer_until is None
    assert (
        decide(notification=_notification(Category.SURVEY_REMINDER), **{**kwargs, "quiet_window": None}).defer_until
        is None
    )  # type: ignore[arg-type]
