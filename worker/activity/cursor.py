"""The activity feed's page cursor: where the last page ended, opaque to callers.

Items are ordered newest first by ``(at, rank, id)``: a care pause or lift (rank 2) sorts before a notification
(rank 1), which sorts before a consent-ledger row (rank 0) of the same instant, and ids break the remaining ties
(each source has its own ids), so a position names exactly one place in the feed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, tuple_

from worker.errors import InvalidInput

#: The sources of the feed, as they rank at equal times.
PAUSE_RANK = 2
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
    if at.tzinfo is None or rank not in (PAUSE_RANK, NOTIFICATION_RANK, LEDGER_RANK) or not 0 < item_id < 2**63:
        raise InvalidInput("cursor", _PROBLEM)
    return Position(at.astimezone(UTC), rank, item_id)


def older_than(at: Any, item_id: Any, rank: int, after: Position) -> ColumnElement[bool]:
    """The rows of one source (all of rank ``rank``) that sort after ``after`` in the feed (are older); ``at`` and
    ``item_id`` are that source's time and id columns."""
    if rank == after.rank:
        return tuple_(at, item_id) < tuple_(after.at, after.id)
    # At the cursor's own instant, a source ranked below the cursor's item still comes after it; one ranked above
    # came before it.
    older: ColumnElement[bool] = at <= after.at if rank < after.rank else at < after.at
    return older
