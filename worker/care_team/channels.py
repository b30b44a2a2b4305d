"""Which channel a follow-up goes on: the first of SMS, email, push that the notice did not already reach her on,
that she has not muted for care-team messages, that consent leaves open (a STOP closes SMS), and that she can be
reached on. Pure, so the rule is tested without a database; the send-time policy checks it all again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.categories import Category, Channel
from worker.delivery.policy import consent_blocked, reachable
from worker.models import Device, Patient, Preference

#: In-app is left out: the message itself is there already, and she has not looked.
ESCALATION_ORDER: tuple[Channel, ...] = (Channel.SMS, Channel.EMAIL, Channel.PUSH)

_CONTACT = {Channel.SMS: "phone number", Channel.EMAIL: "email address", Channel.PUSH: "live push device"}


@dataclass(frozen=True)
class Choice:
    """The channel to use (``None``: none is left), and why each channel before it was passed over."""

    channel: Channel | None
    passed_over: tuple[str, ...]


def next_channel(
    *,
    patient: Patient,
    devices: Sequence[Device],
    preferences: Iterable[Preference],
    consent: Mapping[tuple[str, str | None], bool],
    reached: set[Channel],
) -> Choice:
    category = Category.CARE_TEAM_MESSAGE
    muted = {Channel(p.channel) for p in preferences if p.category == category and not p.enabled}
    refused = consent_blocked(category, consent)
    passed: list[str] = []
    for channel in ESCALATION_ORDER:
        if channel in reached:
            passed.append(f"{channel}: the notice already reached her there")
        elif channel in muted:
            passed.append(f"{channel}: muted by patient")
        elif channel in refused:
            passed.append(f"{channel}: no consent")
        elif not reachable(channel, patient, devices):
            passed.append(f"{channel}: no {_CONTACT[channel]}")
        else:
            return Choice(channel, tuple(passed))
    return Choice(None, tuple(passed))
