"""The activity feed's page cursor: where the last page ended, opaque to callers.

Items are ordered newest first by ``(at, rank, id)``: a notification (rank 1) sorts before a ledger row (rank 0)
of the same instant, and ids break the remaining ties, so a position names exactly one place in the feed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.errors import InvalidInput

#: The two sources of the feed, as they rank at equal times.
NOTIFICATION_RANK = 1
LEDGER_RANK = 0

_PROBLEM = "not a cursor this service gave (pass next_cursor from the previous page unchanged)"


@dataclass(frozen=True, order=True)
class Position:
    """An item's place in the feed; larger is newer."""

    at: datetime
    rank: int
    id: int


def encode_cursor(position: Position) -> str:
    raw = f"{position.at.astimezone(UTC).isoformat()}|{position.rank}|{position.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; :class:`InvalidInput` naming ``cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, rank_text, id_text = raw.split("|")
        at = datetime.fromisoformat(at_text)
        rank, item_id = int(rank_text), int(id_text)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor", _PROBLEM) from None
    if at.tzinfo is None or rank not in (NOTIFICATION_RANK, LEDGER_RANK) or not 0 < item_id < 2**63:
        raise InvalidInput("cursor", _PROBLEM)
    return Position(at.astimezone(UTC), rank, item_id)
