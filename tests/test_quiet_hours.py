"""Quiet hours in the patient's own zone, across DST changes (pure functions; the clock is data)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from worker.categories import Category
from worker.quiet_hours import allowed_window, next_allowed_instant

NY = ZoneInfo("America/New_York")
WINDOW = (time(8, 0), time(21, 0))


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
    ],
)
def test_next_allowed_instant_in_new_york(now_utc: datetime, expected_utc: datetime) -> None:
    assert next_allowed_instant(now_utc, NY, WINDOW) == expected_utc


def test_window_start_inside_a_dst_gap_moves_forward() -> None:
    # A 02:30 window start does not exist on spring-forward day: it becomes 03:30 EDT (07:30 UTC).
    now = datetime(2026, 3, 8, 5, 0, tzinfo=UTC)  # 00:00 EST
    assert next_allowed_instant(now, NY, (time(2, 30), time(21, 0))) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def test_windows_per_category() -> None:
    assert allowed_window(Category.CARE_TEAM_MESSAGE, WINDOW) is None
    assert allowed_window(Category.ACCOUNT_NOTICE, WINDOW) is None
    assert allowed_window(Category.APPOINTMENT_REMINDER, WINDOW) == WINDOW
    assert allowed_window(Category.MARKETING, WINDOW) == (time(8, 0), time(20, 0))
