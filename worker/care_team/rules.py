"""The ``care_team`` settings as the outbox's digest rule, and durations as people read them in a reason."""

from __future__ import annotations

from datetime import timedelta

from worker.outbox.digest import DigestRule
from worker.settings import CareTeamSettings


def digest_rule(settings: CareTeamSettings) -> DigestRule:
    return DigestRule(
        window=settings.digest_window,
        escalate_after=settings.escalate_after,
        urgent_escalate_after=settings.urgent_escalate_after,
    )


def duration_text(value: timedelta) -> str:
    """``4 h``, ``30 min``, ``1 h 30 min``."""
    minutes = round(value.total_seconds() / 60)
    hours, rest = divmod(minutes, 60)
    parts = ([f"{hours} h"] if hours else []) + ([f"{rest} min"] if rest or not hours else [])
    return " ".join(parts)
