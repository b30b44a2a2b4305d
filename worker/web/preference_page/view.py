"""What the page template is given: her cells grouped by category, in her language (no request, no database)."""

from __future__ import annotations

from typing import Any

from worker.preference_page import text
from worker.preference_page.grid import Cell, Lock


def groups(cells: list[Cell], lang: str) -> list[dict[str, Any]]:
    """One card per category: title, one line about it, a box per channel, and why a box is locked."""
    words = text.words(lang)
    out = []
    for category in dict.fromkeys(cell.category for cell in cells):
        title, about = text.category_text(lang, category)
        own = [c for c in cells if c.category is category]
        offers_locked = any(c.lock is Lock.SMS_OFFERS_NEED_CONSENT for c in own)
        out.append(
            {
                "key": category.value,
                "title": title,
                "about": about,
                "cells": [
                    {
                        "name": c.name,
                        "label": text.channel_name(lang, c.channel),
                        "on": c.on,
                        "disabled": not c.changeable,
                        "lock": c.lock.value if c.lock else None,
                    }
                    for c in own
                ],
                "note": words[Lock.SMS_OFFERS_NEED_CONSENT.value] if offers_locked else None,
                "note_id": Lock.SMS_OFFERS_NEED_CONSENT.value,
            }
        )
    return out


def sms_stopped(cells: list[Cell]) -> bool:
    """She texted STOP: the page says once how to get texts again."""
    return any(c.lock is Lock.SMS_STOPPED for c in cells)
