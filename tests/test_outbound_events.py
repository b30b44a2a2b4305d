"""Event payloads carry codes, never text: every reason the delivery path writes maps to a fixed code."""

from __future__ import annotations

import pytest

from worker.outbound.events import EventType, consent_reason, parse_event_types, reason_code

#: Reasons as the delivery path, receipts and erasure write them (worker/delivery/*.py, worker/receipts.py, ...).
REASONS = [
    ("accepted: push (1 target)", "accepted"),
    ("accepted: sms (1 target); not reached: push/fcm: token_dead UNREGISTERED", "accepted"),
    ("twilio receipt: delivered", "delivered"),
    ("sendgrid receipt: delivered", "delivered"),
    ("twilio receipt: undelivered (error 30003)", "provider_reported_failure"),
    ("sendgrid receipt: bounce", "provider_reported_failure"),
    ("expired at 2026-03-02T19:00:00+00:00 before it could be sent", "expired_before_send"),
    ("quiet hours last until after it stops being useful", "quiet_hours"),
    ("appointment already started", "appointment_started"),
    ("muted by patient: marketing on email, push", "muted"),
    ("no consent: marketing on sms", "no_consent"),
    ("muted by patient: survey_reminder on push; unreachable: no phone number", "muted"),
    ("sms held back (frequency cap: 1 healthcare text a day)", "frequency_cap"),
    ("unreachable: no live push device, no phone number", "unreachable"),
    ("no reachable contact point: no channel", "unreachable"),
    ("gave up after 8 attempts; last: push/fcm: retry 503", "retries_exhausted"),
    ("worker errors; broker gave up after 3 retries", "internal_error"),
    ("internal error (KeyError) on the last attempt", "internal_error"),
    ("patient erased", "patient_erased"),
    ("push/fake-push: token_dead Unregistered", "provider_token_dead"),
    ("sms/twilio: opted_out 21610 (unsubscribed recipient)", "provider_opted_out"),
    ("email/sendgrid: failed 400 (bad request)", "provider_failed"),
    ("push/apns: config_error 403 (InvalidProviderToken)", "provider_config_error"),
]


@pytest.mark.parametrize(("reason", "code"), REASONS)
def test_reason_codes(reason: str, code: str) -> None:
    assert reason_code(reason) == code


def test_unknown_reasons_are_other_never_the_text() -> None:
    assert reason_code("something new the code says one day") == "other"
    assert reason_code(None) is None


@pytest.mark.parametrize(
    ("source", "granted", "detail", "code"),
    [
        ("sms_keyword", False, "keyword STOP", "sms_stop"),
        ("sms_keyword", False, "plain-language revocation", "sms_revocation"),
        ("sms_keyword", True, "keyword START", "sms_start"),
        ("unsubscribe_link", False, None, "unsubscribe_link"),
        ("provider_report", False, "twilio 21610", "provider_opt_out"),
        ("app", False, None, "preference_change"),
        ("api", True, "written consent form v3", "preference_change"),
        ("operator", False, None, "operator"),
    ],
)
def test_consent_reasons(source: str, granted: bool, detail: str | None, code: str) -> None:
    assert consent_reason(source, granted, detail) == code


def test_event_type_lists() -> None:
    assert parse_event_types("*") == sorted(EventType)
    assert parse_event_types(" consent.changed , device.pruned,consent.changed") == ["consent.changed", "device.pruned"]
    with pytest.raises(ValueError, match="notification.read"):
        parse_event_types("notification.read")
    with pytest.raises(ValueError, match="at least one"):
        parse_event_types(" , ")
