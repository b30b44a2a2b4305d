"""Injected time: every service asks a clock, so tests travel in time instead of sleeping."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Protocol


class Clock(Protocol):
    """Source of the current instant (timezone-aware UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FrozenClock:
    """A clock that only moves when told to; thread-safe enough for tests (assignment is atomic)."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start instant")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        self._now = self._now + (delta or timedelta(**kwargs))
        return self._now

    def set(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("FrozenClock.set needs a timezone-aware instant")
        self._now = instant.astimezone(UTC)


@cache
def place_zones() -> frozenset[str]:
    """The IANA zones a person can be in: tzdata's names less the files that are not zones of a place
    (``localtime`` is the machine's own zone, ``Factory`` a placeholder, ``posix/*`` and ``right/*`` copies of
    the tree, the latter counting leap seconds). Read once: listing tzdata walks a directory tree."""
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in {"localtime", "Factory", "posixrules"} and not name.startswith(("posix/", "right/"))
    )


def is_place_zone(zone: str) -> bool:
    return zone in place_zones()
