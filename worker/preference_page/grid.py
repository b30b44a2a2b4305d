"""What the page shows (categories x channels) and what she may change from it.

Pure: built from her preferences (:func:`worker.preferences.get_preferences`) and her consent ledger, so the same
rules decide the page and the save. Account notices are shown as always on, with no control. SMS marketing needs
prior express written consent, which a page tap is not: the page can turn it off, never on. A channel-wide
revocation (SMS STOP) closes that channel for everything until she texts START, so its controls are locked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from worker.categories import Category, Channel
from worker.consent import ConsentState
from worker.errors import InvalidInput
from worker.preferences import PreferenceChange

#: Rows of the page, in order (account notices follow, always on).
CATEGORIES = (Category.CARE_TEAM_MESSAGE, Category.APPOINTMENT_REMINDER, Category.SURVEY_REMINDER, Category.MARKETING)
#: Columns: in-app messages live in the secure app itself and are not switched here.
CHANNELS = (Channel.PUSH, Channel.SMS, Channel.EMAIL)


class Lock(StrEnum):
    """Why a control cannot be used; each has a sentence on the page (:mod:`.text`)."""

    SMS_STOPPED = "sms_stopped"
    SMS_OFFERS_NEED_CONSENT = "sms_offers_locked"


@dataclass(frozen=True)
class Cell:
    category: Category
    channel: Channel
    on: bool
    lock: Lock | None = None

    @property
    def name(self) -> str:
        """The form field: ``survey_reminder.sms``."""
        return f"{self.category.value}.{self.channel.value}"

    @property
    def changeable(self) -> bool:
        return self.lock is None


def build_cells(preferences: Mapping[str, Mapping[str, bool]], consent: ConsentState) -> list[Cell]:
    """Every cell of the page, in :data:`CATEGORIES` x :data:`CHANNELS` order."""
    closed = {channel for (channel, category), granted in consent.items() if category is None and not granted}
    cells = []
    for category in CATEGORIES:
        for channel in CHANNELS:
            on = bool(preferences[category.value][channel.value])
            lock = None
            if channel.value in closed:
                on, lock = False, Lock.SMS_STOPPED  # nothing goes by this channel, whatever the switch says
            elif category is Category.MARKETING and channel is Channel.SMS and not on:
                lock = Lock.SMS_OFFERS_NEED_CONSENT
            cells.append(Cell(category, channel, on, lock))
    return cells


def shown_state(cells: Iterable[Cell]) -> str:
    """What the page showed, one ``1``/``0`` per cell: a save changes only what she changed on it."""
    return "".join("1" if cell.on else "0" for cell in cells)


def field_names() -> frozenset[str]:
    return frozenset(f"{category.value}.{channel.value}" for category in CATEGORIES for channel in CHANNELS)


def changes_from(cells: list[Cell], shown: str, ticked: set[str]) -> list[PreferenceChange]:
    """The changes a posted form asks for, against the state now (``cells``) and as shown (``shown``).

    A box she left as it was changes nothing, even if the setting changed elsewhere since the page loaded; a box
    she changed is applied if it is still changeable and not already so. Raises :class:`InvalidInput` for a form
    the page could not have sent (an unknown box, a shown state of the wrong shape).
    """
    unknown = ticked - field_names()
    if unknown:
        raise InvalidInput("form", "names a box the page does not have")
    if len(shown) != len(cells) or set(shown) - {"0", "1"}:
        raise InvalidInput("form", "the page's state does not match")
    changes = []
    for cell, was in zip(cells, shown, strict=True):
        wanted = cell.name in ticked
        if wanted == (was == "1") or wanted == cell.on or not cell.changeable:
            continue
        if wanted and cell.category is Category.MARKETING and cell.channel is Channel.SMS:
            continue  # never from the page: written consent is collected elsewhere
        changes.append(PreferenceChange(category=cell.category, channel=cell.channel, enabled=wanted))
    return changes
