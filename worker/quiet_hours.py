"""Quiet hours in the recipient's own time zone, DST-correct.

Everything that can wait is held until the next instant inside the allowed local window (default
08:00-21:00; marketing 08:00-20:00, the strictest state rule, applied everywhere). Pure functions: tested by
travelling the clock across DST changes. Two extension points for stricter rules: :func:`allowed_window`
decides the window (per category and per patient, e.g. her US state), :func:`next_allowed_instant` finds the
next instant inside it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from worker.categories import RULES, Category
from worker.models import Patient

#: Marketing texts: Florida and Oklahoma allow 08:00-20:00 only; we use the strictest window for everyone.
MARKETING_WINDOW = (time(8, 0), time(20, 0))


def allowed_window(category: Category, patient: Patient, default: tuple[time, time]) -> tuple[time, time] | None:
    """The local ``(start, end)`` window this patient may get ``category`` in, or ``None`` for any hour.

    ``default`` is the configured window (``scheduling.quiet_hours_start``/``_end``). ``patient`` is there so
    per-patient rules (her US state) can narrow the window; none does yet beyond the marketing window.
    """
    del patient  # no per-patient rule narrows the window yet
    if not RULES[category].respects_quiet_hours:
        return None
    if category is Category.MARKETING:
        return (max(default[0], MARKETING_WINDOW[0]), min(default[1], MARKETING_WINDOW[1]))
    return default


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """``at`` on ``day`` in ``zone``, as UTC.

    ``fold=0`` (PEP 495) reads a wall time skipped by spring-forward with the pre-transition offset, which
    lands it just after the gap (02:30 becomes 03:30 daylight time); a repeated time takes its first occurrence.
    """
    return datetime.combine(day, at).replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_allowed_instant(now_utc: datetime, zone: ZoneInfo, start: time, end: time) -> datetime:
    """``now_utc`` if it is inside the local window ``[start, end)``, else the start of the next one (UTC).

    The check is on real instants, not wall times, so it holds on DST days: a window opening inside the
    spring-forward gap opens just after it; on fall-back day the repeated hour is inside or outside once each.
    """
    local = now_utc.astimezone(zone)
    for day in (local.date() - timedelta(days=1), local.date(), local.date() + timedelta(days=1)):
        opens, closes = _local_instant(day, start, zone), _local_instant(day, end, zone)
        if now_utc < opens:
            return opens
        if now_utc < closes:
            return now_utc
    return _local_instant(local.date() + timedelta(days=2), start, zone)
