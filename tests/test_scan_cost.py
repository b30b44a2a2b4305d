"""The scheduler's due scan costs what is due, not what exists (PostgreSQL, where production runs it).

Measured in pages (shared buffers the executor touches, from ``EXPLAIN (ANALYZE, BUFFERS)``), not in
milliseconds, so the test is deterministic on a busy machine: with 20x more future reminders the same 100 due
rows must cost about the same pages. ``bench/scan.py`` gives the wall-clock figures for 10k vs 1M rows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import col

from worker.clock import FrozenClock
from worker.db import make_engine
from worker.models import Notification
from worker.outbox.relay import _due_conditions, relay

pytestmark = pytest.mark.postgres

NOW = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
GRACE, REQUEUE = timedelta(seconds=10), timedelta(minutes=15)
DUE = 100


def _insert(conn: Connection, prefix: str, count: int, due: bool) -> None:
    # Future rows spread over 30 days (like real reminder plans); due rows a minute ago.
    when = ":now - interval '1 minute'" if due else ":now + ((g % 43200) || ' minutes')::interval + interval '1 minute'"
    conn.execute(
        text(
            "INSERT INTO notification (patient_id, category, context, idempotency_key, state, not_before, "
            "attempt_count, created_at, updated_at) "
            f"SELECT 1, 'appointment_reminder', '{{}}', :prefix || g, 'pending', {when}, 0, :now, :now "
            "FROM generate_series(1, :n) g"
        ),
        {"now": NOW, "n": count, "prefix": prefix},
    )


def _plans(engine: Engine) -> list[dict[str, Any]]:
    """The executed plan of each of the relay's scans, exactly as the relay issues them."""
    plans = []
    with engine.connect() as conn:
        for condition in _due_conditions(NOW, GRACE, REQUEUE):
            query = (
                select(col(Notification.id))
                .where(condition)
                .order_by(col(Notification.id))
                .limit(500)
                .with_for_update(skip_locked=True)
            )
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            raw = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}")).scalar_one()
            plans.append((raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"])
        conn.rollback()  # FOR UPDATE took row locks
    return plans


def _pages(plan: dict[str, Any]) -> int:
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


def _index_names(plan: dict[str, Any]) -> set[str]:
    names = {plan["Index Name"]} if "Index Name" in plan else set()
    for child in plan.get("Plans", []):
        names |= _index_names(child)
    return names


def _scan_types(plan: dict[str, Any]) -> set[str]:
    types = {plan["Node Type"]}
    for child in plan.get("Plans", []):
        types |= _scan_types(child)
    return types


def test_due_scan_pages_do_not_grow_with_future_rows(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                    "VALUES ('scan', 'UTC', 'en', now(), now())"
                )
            )
            _insert(conn, "d", DUE, due=True)
            _insert(conn, "f", 10_000, due=False)
            conn.execute(text("ANALYZE notification"))
        small = _plans(engine)
        with engine.begin() as conn:
            _insert(conn, "g", 190_000, due=False)
            conn.execute(text("ANALYZE notification"))
        large = _plans(engine)

        for plan in small + large:
            assert _index_names(plan) == {"ix_notification_due"}, plan
            assert "Seq Scan" not in _scan_types(plan), plan
        # The scheduled-rows scan returns the 100 due rows at both sizes, touching about the same pages.
        assert small[0]["Actual Rows"] == large[0]["Actual Rows"] == DUE
        total_small, total_large = sum(map(_pages, small)), sum(map(_pages, large))
        assert total_large <= total_small * 1.5 + 10, (total_small, total_large)
        # For scale: a scan over what exists would read every one of the table's pages at least once.
        with engine.connect() as conn:
            table_pages = conn.execute(
                text("SELECT relpages FROM pg_class WHERE relname = 'notification'")
            ).scalar_one()
        assert table_pages > 10 * total_large, (table_pages, total_large)

        queued: list[int] = []
        relay(engine, FrozenClock(NOW), queued.extend, grace=GRACE, requeue_after=REQUEUE, batch_size=500)
        assert len(queued) == DUE
    finally:
        engine.dispose()
