"""Outbound-webhook deliveries delivered or given up more than ``webhooks.retention_days`` ago are deleted, then
the events no delivery refers to any more, a small batch per transaction. What is purged can still be sent again:
``carenotify webhooks replay`` reads the change logs, not these tables."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.engine import Engine

from worker.models_outbound import WebhookDelivery, WebhookEvent
from worker.settings import WebhookSettings

_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
_EVENTS = WebhookEvent.__table__  # type: ignore[attr-defined]
#: The tables this part purges, as the retention job reports them.
TABLES = ("webhook_delivery", "webhook_event")


def cutoff(now: datetime, settings: WebhookSettings) -> datetime:
    return now - timedelta(days=settings.retention_days)


def _settled_before(before: datetime) -> ColumnElement[bool]:
    d = _DELIVERIES
    return d.c.state.in_(("delivered", "failed")) & (d.c.created_at < before)  # type: ignore[no-any-return]


def _orphaned_before(before: datetime) -> ColumnElement[bool]:
    e, d = _EVENTS, _DELIVERIES
    return (e.c.occurred_at < before) & ~exists().where(d.c.event_id == e.c.id)  # type: ignore[no-any-return]


def purge_settled(engine: Engine, before: datetime, *, batch_size: int, limit: int) -> Counter[str]:
    """Delete settled deliveries created before ``before`` and the events left without a delivery, at most
    ``limit`` of each, ``batch_size`` per transaction; rows deleted per table."""
    deleted: Counter[str] = Counter()
    while deleted["webhook_delivery"] < limit and deleted["webhook_event"] < limit:
        with engine.begin() as conn:
            ids = list(
                conn.execute(select(_DELIVERIES.c.id).where(_settled_before(before)).limit(batch_size)).scalars()
            )
            if ids:
                conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.id.in_(ids)))
            orphans = list(
                conn.execute(select(_EVENTS.c.id).where(_orphaned_before(before)).limit(batch_size)).scalars()
            )
            if orphans:
                conn.execute(delete(_EVENTS).where(_EVENTS.c.id.in_(orphans)))
        deleted.update({"webhook_delivery": len(ids), "webhook_event": len(orphans)})
        if not ids and not orphans:
            break
    return deleted


def due_counts(engine: Engine, before: datetime) -> dict[str, int]:
    """What :func:`purge_settled` would delete now (``carenotify db purge --dry-run``): the settled deliveries, and
    the events that would be left without one (those already without one, and those whose every delivery goes)."""
    d, e = _DELIVERIES, _EVENTS
    kept = exists().where(d.c.event_id == e.c.id, ~_settled_before(before))
    with engine.connect() as conn:
        deliveries = conn.scalar(select(func.count()).select_from(d).where(_settled_before(before)))
        events = conn.scalar(select(func.count()).select_from(e).where(e.c.occurred_at < before, ~kept))
    return {"webhook_delivery": int(deliveries or 0), "webhook_event": int(events or 0)}
