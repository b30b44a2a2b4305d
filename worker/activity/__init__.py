"""A patient's activity: what support needs to answer "why didn't she get it?" knowing only her ref.

Her notifications (state, reason, channels tried, provider answers, times) and her consent-ledger rows (consent,
mutes) and her care pauses and lifts, interleaved newest first and paged by an opaque cursor.
"""

from worker.activity.cursor import Position, decode_cursor, encode_cursor
from worker.activity.feed import (
    ActivityPage,
    LedgerItem,
    NotificationItem,
    PauseItem,
    ProviderAnswer,
    page_as_json,
    patient_activity,
)

__all__ = [
    "ActivityPage",
    "LedgerItem",
    "NotificationItem",
    "PauseItem",
    "Position",
    "ProviderAnswer",
    "decode_cursor",
    "encode_cursor",
    "page_as_json",
    "patient_activity",
]
