"""A care pause: the care team holds everything but care-team messages and account notices for a patient
(after a loss, during a NICU stay, at her request), until a date or until lifted.

- :mod:`.rules`: what a pause does to each category at send time (pure; both delivery paths call it).
- :mod:`.store`: pausing and lifting, written to the consent ledger (``care_pause_event``), and reading it.
"""

from worker.care_pause.rules import REASON_PREFIX, Hold, Pause, SurveyOnPause, describe, hold, parse_until
from worker.care_pause.store import (
    PauseView,
    current_pause,
    latest_pauses,
    lift_pause,
    pause_from_columns,
    paused_now,
    set_pause,
)

__all__ = [
    "REASON_PREFIX",
    "Hold",
    "Pause",
    "PauseView",
    "SurveyOnPause",
    "current_pause",
    "describe",
    "hold",
    "latest_pauses",
    "lift_pause",
    "parse_until",
    "pause_from_columns",
    "paused_now",
    "set_pause",
]
