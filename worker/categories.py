"""What a notification is about, and through which channels it may travel (DESIGN.md's category table)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Channel(StrEnum):
    PUSH = "push"
    SMS = "sms"
    EMAIL = "email"
    INAPP = "inapp"


class Category(StrEnum):
    CARE_TEAM_MESSAGE = "care_team_message"
    APPOINTMENT_REMINDER = "appointment_reminder"
    SURVEY_REMINDER = "survey_reminder"
    ACCOUNT_NOTICE = "account_notice"
    MARKETING = "marketing"


@dataclass(frozen=True)
class CategoryRule:
    """The fixed facts of a category; patient preferences and consent are checked on top of these."""

    transactional: bool
    default_channels: tuple[Channel, ...]
    #: The patient may mute it (account notices are required and may not be muted).
    mutable: bool
    #: Waits for the recipient's daytime window instead of arriving at night.
    respects_quiet_hours: bool
    #: Sent on the first channel that reaches the patient, not on all of them (push, then SMS).
    fallback: bool = False


RULES: dict[Category, CategoryRule] = {
    Category.CARE_TEAM_MESSAGE: CategoryRule(
        transactional=True,
        default_channels=(Channel.PUSH, Channel.SMS),
        mutable=True,
        respects_quiet_hours=False,
        fallback=True,
    ),
    Category.APPOINTMENT_REMINDER: CategoryRule(
        transactional=True,
        default_channels=(Channel.PUSH, Channel.SMS),
        mutable=True,
        respects_quiet_hours=True,
    ),
    Category.SURVEY_REMINDER: CategoryRule(
        transactional=True,
        default_channels=(Channel.PUSH, Channel.EMAIL),
        mutable=True,
        respects_quiet_hours=True,
    ),
    Category.ACCOUNT_NOTICE: CategoryRule(
        transactional=True, default_channels=(Channel.EMAIL,), mutable=False, respects_quiet_hours=False
    ),
    Category.MARKETING: CategoryRule(
        transactional=False,
        default_channels=(Channel.PUSH, Channel.EMAIL, Channel.SMS),
        mutable=True,
        respects_quiet_hours=True,
    ),
}
