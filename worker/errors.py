"""One exception tree. Messages name what is wrong, never a patient's data."""

from __future__ import annotations


class CarenotifyError(Exception):
    """Base of every error carenotify raises on purpose."""


class ConfigError(CarenotifyError):
    """A setting is missing or invalid; the message names the environment variable or key."""


class InvalidInput(CarenotifyError):
    """A caller sent something we cannot accept; ``field`` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(CarenotifyError):
    """A referenced record does not exist (referenced by id, never by personal data)."""


class IllegalTransition(CarenotifyError):
    """A notification state change that the state machine does not allow."""
