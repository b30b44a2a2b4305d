"""Expired Idempotency-Keys and webhook receipts are deleted, a small batch per transaction (they live far less
than ``retention.days``: their own lifetimes, ``web.idempotency_key_hours`` and ``web.webhook_receipt_hours``).

Both tables only ever grow at their high end: a row's id is drawn when it is written, with its time set just
before, so ids and times grow together (a key taken over gets a new row, a new id). The oldest rows are
therefore the first by primary key, and a batch is "the first ``batch_size`` rows by id, of which the expired
ones": it reads at most one batch through the primary key, needs no index on the time column (none is kept
up to date on the insert path for it) and stops at the first row still alive. Each batch is its own short
transaction, so the job never holds locks for long nor blocks the requests writing new rows; two schedulers
running it at once delete the same rows, which is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import session_scope
from worker.models_api import IdempotencyRecord, WebhookReceipt
from worker.settings import WebSettings


@dataclass(frozen=True)
class Purged:
    """Rows deleted by one run."""

    idempotency_keys: int
    webhook_receipts: int


def _purge_oldest(engine: Engine, model: Any, at: Any, cutoff: datetime, *, batch_size: int, limit: int) -> int:
    ids = col(model.id)
    removed = 0
    while removed < limit:
        with session_scope(engine) as session:
            rows = session.execute(select(ids, at).order_by(ids).limit(min(batch_size, limit - removed))).all()
            expired = [row[0] for row in rows if row[1] < cutoff]
            if expired:
                session.execute(delete(model).where(ids.in_(expired)))
        removed += len(expired)
        if len(expired) < len(rows) or len(rows) < batch_size:  # reached a live row, or the end of the table
            break
    return removed


def purge_expired(engine: Engine, clock: Clock, web: WebSettings, *, batch_size: int, limit: int) -> Purged:
    """Delete the Idempotency-Keys older than their lifetime and the webhook receipts past theirs, at most
    ``limit`` of each, ``batch_size`` per transaction."""
    now = clock.now()
    bounds = {"batch_size": batch_size, "limit": limit}
    return Purged(
        idempotency_keys=_purge_oldest(
            engine,
            IdempotencyRecord,
            col(IdempotencyRecord.created_at),
            now - timedelta(hours=web.idempotency_key_hours),
            **bounds,
        ),
        webhook_receipts=_purge_oldest(
            engine,
            WebhookReceipt,
            col(WebhookReceipt.received_at),
            now - timedelta(hours=web.webhook_receipt_hours),
            **bounds,
        ),
    )


def expired_counts(engine: Engine, clock: Clock, web: WebSettings) -> dict[str, int]:
    """What :func:`purge_expired` would delete now, per table (``carenotify db purge --dry-run``)."""
    now = clock.now()
    with session_scope(engine) as session:
        keys = session.scalar(
            select(func.count()).where(
                col(IdempotencyRecord.created_at) < now - timedelta(hours=web.idempotency_key_hours)
            )
        )
        receipts = session.scalar(
            select(func.count()).where(
                col(WebhookReceipt.received_at) < now - timedelta(hours=web.webhook_receipt_hours)
            )
        )
    return {"idempotency_record": int(keys or 0), "webhook_receipt": int(receipts or 0)}
