"""A patient's notifications and consent-ledger rows, newest first, one page at a time.

A page costs the same at any table size: each source is read through an index on ``(patient_id, time, id)``
(migration 0055) from the cursor down, ``limit + 1`` rows each, then merged; the page's provider calls come with
its notifications (an outer join by ``notification_id``): two statements a page. No contact data is read: a
provider answer is its provider, channel, outcome and error code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from worker.activity.cursor import (
    LEDGER_RANK,
    NOTIFICATION_RANK,
    PAUSE_RANK,
    Position,
    decode_cursor,
    encode_cursor,
    older_than,
)
from worker.categories import RULES, Category
from worker.models import DeliveryAttempt, Notification
from worker.models_consent import CarePauseEvent, ConsentEvent

#: Largest page a caller may ask for.
MAX_LIMIT = 100


@dataclass(frozen=True)
class ProviderAnswer:
    """One provider call: who answered and how. Never the address or number it went to."""

    at: datetime
    channel: str
    provider: str
    outcome: str
    error_code: str | None


@dataclass(frozen=True)
class NotificationItem:
    id: int
    at: datetime  # when it was created
    category: str
    state: str
    reason: str | None
    #: The channels it asked for (``None``: the category's defaults) and those a provider was called on.
    channels_requested: list[str] | None
    channels_tried: list[str]
    answers: list[ProviderAnswer]
    not_before: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    campaign_id: int | None
    kind: str = "notification"

    @property
    def position(self) -> Position:
        return Position(self.at, NOTIFICATION_RANK, self.id)


@dataclass(frozen=True)
class LedgerItem:
    """A consent-ledger row: a consent given or withdrawn, a mute switch, or anything else the ledger records
    (a care pause, ...), shown as stored: what (channel, category, granted), how (source), who (actor), when."""

    id: int
    at: datetime
    kind: str
    channel: str
    category: str | None
    granted: bool
    source: str
    actor: str
    detail: str | None

    @property
    def position(self) -> Position:
        return Position(self.at, LEDGER_RANK, self.id)


@dataclass(frozen=True)
class PauseItem:
    """A care pause set or changed (``paused``), or lifted: the reason code, until when, whether appointment
    reminders are held too, who and how. Operators only: the code is never in a patient's text or a log."""

    id: int
    at: datetime
    paused: bool
    reason_code: str | None
    until: datetime | None
    hold_appointment_reminders: bool
    source: str
    actor: str
    kind: str = "care_pause"

    @property
    def position(self) -> Position:
        return Position(self.at, PAUSE_RANK, self.id)


Item = NotificationItem | LedgerItem | PauseItem


@dataclass(frozen=True)
class ActivityPage:
    items: list[Item] = field(default_factory=list)
    #: Pass back as ``cursor`` for the next (older) page; ``None`` on the last page.
    next_cursor: str | None = None


def ledger_kind(channel: str, category: str | None) -> str:
    """``preference`` for a mute switch of a transactional category, ``consent`` for marketing or a whole channel
    (SMS STOP), and the row's own category for anything else the ledger holds (e.g. a care pause)."""
    if category is None or category == Category.MARKETING.value:
        return "consent"
    if category in Category.__members__.values() and RULES[Category(category)].transactional:
        return "preference"
    return category


def patient_activity(engine: Engine, patient_id: int, *, cursor: str | None = None, limit: int = 25) -> ActivityPage:
    """One page of the patient's activity after ``cursor`` (from the newest without one)."""
    limit = max(1, min(limit, MAX_LIMIT))
    after = decode_cursor(cursor) if cursor else None
    with engine.connect() as conn:
        notifications = _notifications(conn, patient_id, after, limit + 1)
        ledger = _ledger(conn, patient_id, after, limit + 1)
        pauses = _pauses(conn, patient_id, after, limit + 1)
        conn.rollback()  # read only
    merged: list[Item] = sorted([*notifications, *ledger, *pauses], key=lambda item: item.position, reverse=True)
    page = merged[:limit]
    more = len(merged) > limit
    return ActivityPage(items=page, next_cursor=encode_cursor(page[-1].position) if more and page else None)


def _notifications(conn: Connection, patient_id: int, after: Position | None, n: int) -> list[NotificationItem]:
    """The page's notifications and their provider calls, in one statement (one round trip): the ``n`` rows
    from the cursor down, outer-joined to their attempts by ``ix_delivery_attempt_notification_id``."""
    query = select(
        col(Notification.id),
        col(Notification.created_at),
        col(Notification.category),
        col(Notification.state),
        col(Notification.reason),
        col(Notification.channels),
        col(Notification.not_before),
        col(Notification.updated_at),
        col(Notification.finished_at),
        col(Notification.campaign_id),
    ).where(col(Notification.patient_id) == patient_id)
    if after is not None:
        query = query.where(older_than(col(Notification.created_at), col(Notification.id), NOTIFICATION_RANK, after))
    page = query.order_by(col(Notification.created_at).desc(), col(Notification.id).desc()).limit(n).subquery("page")
    attempt = DeliveryAttempt.__table__.alias("attempt")  # type: ignore[attr-defined]
    rows = conn.execute(
        select(
            page,
            attempt.c.started_at.label("answer_at"),
            attempt.c.channel.label("answer_channel"),
            attempt.c.provider.label("answer_provider"),
            attempt.c.outcome.label("answer_outcome"),
            attempt.c.error_code.label("answer_error_code"),
        )
        .select_from(page.outerjoin(attempt, attempt.c.notification_id == page.c.id))
        .order_by(page.c.created_at.desc(), page.c.id.desc(), attempt.c.id)
    ).all()
    out: list[NotificationItem] = []
    for row in rows:
        if not out or out[-1].id != row.id:
            out.append(
                NotificationItem(
                    id=int(row.id),
                    at=row.created_at,
                    category=str(row.category),
                    state=str(row.state),
                    reason=row.reason,
                    channels_requested=list(row.channels) if row.channels is not None else None,
                    channels_tried=[],
                    answers=[],
                    not_before=row.not_before,
                    updated_at=row.updated_at,
                    finished_at=row.finished_at,
                    campaign_id=row.campaign_id,
                )
            )
        if row.answer_provider is not None:
            item = out[-1]
            item.answers.append(
                ProviderAnswer(
                    at=row.answer_at,
                    channel=str(row.answer_channel),
                    provider=row.answer_provider,
                    outcome=row.answer_outcome,
                    error_code=row.answer_error_code,
                )
            )
            if str(row.answer_channel) not in item.channels_tried:
                item.channels_tried.append(str(row.answer_channel))
    return out


def _ledger(conn: Connection, patient_id: int, after: Position | None, n: int) -> list[LedgerItem]:
    query = select(
        col(ConsentEvent.id),
        col(ConsentEvent.at),
        col(ConsentEvent.channel),
        col(ConsentEvent.category),
        col(ConsentEvent.granted),
        col(ConsentEvent.source),
        col(ConsentEvent.actor),
        col(ConsentEvent.detail),
    ).where(col(ConsentEvent.patient_id) == patient_id)
    if after is not None:
        query = query.where(older_than(col(ConsentEvent.at), col(ConsentEvent.id), LEDGER_RANK, after))
    rows = conn.execute(query.order_by(col(ConsentEvent.at).desc(), col(ConsentEvent.id).desc()).limit(n)).all()
    return [
        LedgerItem(
            id=int(row.id),
            at=row.at,
            kind=ledger_kind(row.channel, row.category),
            channel=row.channel,
            category=row.category,
            granted=bool(row.granted),
            source=str(row.source),
            actor=row.actor,
            detail=row.detail,
        )
        for row in rows
    ]


def _pauses(conn: Connection, patient_id: int, after: Position | None, n: int) -> list[PauseItem]:
    """Her care pauses and lifts (``care_pause_event``, part of the consent ledger); a patient has few."""
    event = CarePauseEvent
    query = select(
        col(event.id),
        col(event.at),
        col(event.paused),
        col(event.reason_code),
        col(event.until),
        col(event.hold_appointment_reminders),
        col(event.source),
        col(event.actor),
    ).where(col(event.patient_id) == patient_id)
    if after is not None:
        query = query.where(older_than(col(event.at), col(event.id), PAUSE_RANK, after))
    rows = conn.execute(query.order_by(col(event.at).desc(), col(event.id).desc()).limit(n)).all()
    return [
        PauseItem(
            id=int(row.id),
            at=row.at,
            paused=bool(row.paused),
            reason_code=str(row.reason_code) if row.reason_code else None,
            until=row.until,
            hold_appointment_reminders=bool(row.hold_appointment_reminders),
            source=str(row.source),
            actor=row.actor,
        )
        for row in rows
    ]


def page_as_json(page: ActivityPage) -> dict[str, Any]:
    """The page as JSON-ready data (instants in ISO 8601), shaped as the API answers it."""

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    items = []
    for item in page.items:
        data = plain(asdict(item))
        if isinstance(item, NotificationItem):
            data.pop("kind")
            items.append({"type": "notification", **data})
        elif isinstance(item, PauseItem):
            data.pop("kind")
            items.append({"type": "care_pause", **data})
        else:
            items.append({"type": "ledger", **data})
    return {"items": items, "next_cursor": page.next_cursor}
