"""Contact data as the console shows it: country code and last four digits, first letters and the TLD."""

from __future__ import annotations

import pytest

from worker.web.console.masking import mask_email, mask_phone


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("+13125550142", "+1 ***-***-0142"),
        ("+17875550199", "+1 ***-***-0199"),  # Puerto Rico: still NANP
        ("+447700900123", "+44 ***-***-0123"),
        ("+1212", "+1 ***"),  # too short to show any digits safely
        ("not a number 5550142", "***-***-0142"),
        (None, None),
        ("", None),
    ],
)
def test_phone(stored: str | None, shown: str | None) -> None:
    assert mask_phone(stored) == shown


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("jane.doe@example.org", "j***@e***.org"),
        ("a@b.co.uk", "a***@b***.uk"),
        ("x@localhost", "***"),
        ("broken", "***"),
        (None, None),
    ],
)
def test_email(stored: str | None, shown: str | None) -> None:
    assert mask_email(stored) == shown
    if stored and shown:
        assert stored not in shown
