"""Quiet hours in the recipient's own time zone, DST-correct.

Everything that can wait is held until the next instant inside the allowed local window (default
08:00-21:00; marketing 08:00-20:00, the strictest state rule, applied everywhere). Pure functions: tested by
travelling the clock across DST changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from worker.categories import RULES, Category

#: Marketing texts: Florida and Oklahoma allow 08:00-20:00 only; we use the strictest window for everyone.
MARKETING_WINDOW = (time(8, 0), time(20, 0))


def allowed_window(category: Category, default: tuple[time, time]) -> tuple[time, time] | None:
    """The local window a category must respect, or ``None`` if it may arrive at any hour."""
    if not RULES[category].respects_quiet_hours:
        return None
    if category is Category.MARKETING:
        return (max(default[0], MARKETING_WINDOW[0]), min(default[1], MARKETING_WINDOW[1]))
    return default


def _local_instant(day: datetime, at: time, zone: ZoneInfo) -> datetime:
    """``at`` on ``day`` in ``zone``, as UTC.

    ``fold=0`` (PEP 495) reads a wall time skipped by spring-forward with the pre-transition offset, which
    lands it just after the gap (02:30 becomes 03:30 daylight time); a repeated time takes its first occurrence.
    """
    return datetime.combine(day.date(), at).replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_allowed_instant(now: datetime, zone: ZoneInfo, window: tuple[time, time]) -> datetime:
    """``now`` if it is inside the local window, else the start of the next window (as UTC)."""
    start, end = window
    local = now.astimezone(zone)
    if start <= local.time() < end:
        return now
    day = local if local.time() < start else local + timedelta(days=1)
    return _local_instant(day, start, zone)
