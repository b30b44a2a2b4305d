"""The send-time decision: whether, when and through which channels a notification may go.

Pure: it takes the facts (notification, patient, preferences, devices, now) and returns a decision, so it is
evaluated at send time for work already queued, and tested without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

from worker.caps import Counts, capped
from worker.care_pause import Hold, Pause, hold
from worker.categories import RULES, Category, Channel
from worker.models import Device, Notification, Patient, Preference
from worker.quiet_hours import allowed_window, next_allowed_instant


@dataclass(frozen=True)
class Decision:
    """Exactly one of: suppress (with reason), expire, cancel, defer (until), or send on ``channels`` in order."""

    channels: tuple[Channel, ...] = ()
    suppress: str | None = None
    expire: str | None = None
    defer_until: datetime | None = None
    defer_reason: str | None = None
    #: Stop at the first channel that reaches the patient (push, then SMS).
    fallback: bool = False
    notes: tuple[str, ...] = field(default=())
    cancel: str | None = None
    #: A wait that is not an attempt (a care pause): the claim's attempt is handed back.
    uncount: bool = False


def requested_channels(notification: Notification) -> tuple[Channel, ...]:
    rule = RULES[notification.category]
    if notification.channels:
        return tuple(Channel(c) for c in notification.channels)
    return rule.default_channels


def muted_channels(notification: Notification, preferences: Iterable[Preference]) -> set[Channel]:
    """Channels the patient switched off for this category (ignored for required categories)."""
    if not RULES[notification.category].mutable:
        return set()
    return {Channel(p.channel) for p in preferences if p.category == notification.category and not p.enabled}


def consent_blocked(category: Category, consent: Mapping[tuple[str, str | None], bool]) -> set[Channel]:
    """Channels the consent ledger closes for this category.

    A channel-wide revocation (SMS STOP) closes the channel for everything; marketing also needs the channel's
    marketing consent: opt-in (explicit grant) for SMS, opt-out (allowed unless revoked) for push and email.
    """
    blocked = {Channel(channel) for (channel, cat), granted in consent.items() if cat is None and not granted}
    if category is Category.MARKETING:
        for channel in Channel:
            granted = consent.get((channel.value, Category.MARKETING.value))
            if granted is False or (channel is Channel.SMS and granted is not True):
                blocked.add(channel)
    return blocked


def reachable(channel: Channel, patient: Patient, devices: Sequence[Device]) -> bool:
    if channel is Channel.PUSH:
        return any(d.live for d in devices)
    if channel is Channel.SMS:
        return bool(patient.phone_e164)
    if channel is Channel.EMAIL:
        return bool(patient.email)
    return True  # in-app: the patient's account always exists while the patient does


def decide(
    *,
    notification: Notification,
    patient: Patient,
    preferences: Sequence[Preference],
    devices: Sequence[Device],
    now: datetime,
    consent: Mapping[tuple[str, str | None], bool] | None = None,
    quiet_window: tuple[time, time] | None = None,
    counts: Counts | None = None,
    pause: Pause | None = None,
    survey_on_pause: str | None = None,
) -> Decision:
    """Evaluate every send-time rule, cheapest and most final first."""
    if notification.expires_at is not None and notification.expires_at <= now:
        return Decision(expire=f"expired at {notification.expires_at.isoformat()} before it could be sent")
    held = hold(
        Category(notification.category),
        pause,
        now,
        zone=patient.time_zone,
        expires_at=notification.expires_at,
        survey_on_pause=survey_on_pause,
    )
    if held is not None:
        return _paused(held)

    rule = RULES[notification.category]
    wanted = requested_channels(notification)
    muted = muted_channels(notification, preferences)
    refused = consent_blocked(Category(notification.category), consent or {}) - muted
    if notification.context.get("sms_reply"):
        # The one reply a STOP/START/HELP text gets: the law requires it, so a revocation cannot block it.
        refused.discard(Channel.SMS)
    whole, capped_channels, cap_reason = (
        capped(Category(notification.category), counts) if counts else (False, set(), None)
    )
    if whole:
        return Decision(suppress=cap_reason)
    refused |= capped_channels - muted
    allowed = tuple(c for c in wanted if c not in muted and c not in refused)
    held_back = _held_back(str(notification.category), set(wanted), muted, refused, capped_channels, cap_reason)
    if not allowed:
        return Decision(suppress="; ".join(held_back))
    deferral = _quiet_hours(notification, patient, now, quiet_window)
    if deferral is not None:
        return deferral
    usable = tuple(c for c in allowed if reachable(c, patient, devices))
    notes = tuple(f"{c} muted" for c in sorted(muted & set(wanted)))
    if cap_reason and capped_channels & set(wanted):
        notes += (f"{', '.join(sorted(capped_channels & set(wanted)))} held back ({cap_reason})",)
    if not usable:
        missing = ", ".join(f"no {_contact_name(c)}" for c in allowed)
        if held_back:
            # The patient's own choice closed the channels she can be reached on: suppressed, not failed.
            return Decision(suppress="; ".join([*held_back, f"unreachable: {missing}"]))
        return Decision(channels=(), notes=notes + (f"unreachable: {missing}",), fallback=rule.fallback)
    return Decision(channels=usable, fallback=rule.fallback, notes=notes)


def _paused(held: Hold) -> Decision:
    """A care pause's verdict (worker.care_pause.rules) as a decision."""
    if held.action == "suppress":
        return Decision(suppress=held.reason)
    if held.action == "cancel":
        return Decision(cancel=held.reason)
    return Decision(defer_until=held.until, defer_reason=held.reason, uncount=True)


def _held_back(
    category: str,
    wanted: set[Channel],
    muted: set[Channel],
    refused: set[Channel],
    capped: set[Channel],
    cap_reason: str | None,
) -> list[str]:
    """Why some wanted channels may not be used: the patient's mutes, missing consent, a frequency cap."""
    parts = []
    if muted & wanted:
        parts.append(f"muted by patient: {category} on {', '.join(sorted(muted & wanted))}")
    if (refused - capped) & wanted:
        parts.append(f"no consent: {category} on {', '.join(sorted((refused - capped) & wanted))}")
    if cap_reason and capped & wanted:
        parts.append(cap_reason)
    return parts


def _quiet_hours(
    notification: Notification, patient: Patient, now: datetime, default: tuple[time, time] | None
) -> Decision | None:
    """Defer what can wait into the patient's next local window; expire it if that is too late."""
    if default is None:
        return None
    window = allowed_window(Category(notification.category), patient, default)
    if window is None and notification.context.get("quiet_hours"):
        window = default  # a notice that can wait although its category need not (a care-team follow-up)
    if window is None:
        return None
    zone = ZoneInfo(patient.time_zone)
    opens = next_allowed_instant(now, zone, *window)
    if opens <= now:
        return None
    if notification.expires_at is not None and opens >= notification.expires_at:
        return Decision(expire="quiet hours last until after it stops being useful")
    local = opens.astimezone(zone)
    return Decision(defer_until=opens, defer_reason=f"quiet hours: held until {local:%H:%M} {patient.time_zone}")


def _contact_name(channel: Channel) -> str:
    return {
        Channel.PUSH: "live push device",
        Channel.SMS: "phone number",
        Channel.EMAIL: "email address",
        Channel.INAPP: "in-app account",
    }[channel]
