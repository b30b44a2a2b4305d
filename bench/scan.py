"""Scheduler scan cost: one relay tick with 10 thousand vs 1 million future reminders (PostgreSQL).

Each size gets a fresh database with N future rows plus the same 100 due rows; a tick (the relay's three
index range scans with FOR UPDATE SKIP LOCKED, enqueueing the 100 due rows) is timed several times,
un-stamping the due rows between runs. The 10k figure is the baseline; the claim is that the tick costs what
is due, not what exists, so the ratio should stay near 1.

    .venv/bin/python -m bench.scan [--sizes 10000 1000000] [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlmodel import col

from bench.harness import scratch_database
from worker.clock import FrozenClock
from worker.db import make_engine
from worker.models import Notification
from worker.outbox.relay import _due_conditions, relay

NOW = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
DUE = 100


def pages(engine: Engine) -> int:
    """Shared buffers one tick's scans touch (EXPLAIN ANALYZE BUFFERS): the machine-independent cost."""
    total = 0
    with engine.connect() as conn:
        conn.execute(text("UPDATE notification SET enqueued_at = NULL WHERE idempotency_key LIKE 'd%'"))
        for condition in _due_conditions(NOW, timedelta(seconds=10), timedelta(minutes=15)):
            query = (
                select(col(Notification.id))
                .where(condition)
                .order_by(col(Notification.id))
                .limit(500)
                .with_for_update(skip_locked=True)
            )
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            raw = conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {compiled}")).scalar_one()
            plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
            total += int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])
        conn.rollback()
    return total


def measure(size: int, runs: int) -> tuple[list[float], int]:
    with scratch_database() as url:
        engine = make_engine(url)
        try:
            return _measure(engine, size, runs)
        finally:
            engine.dispose()


def _measure(engine: Engine, size: int, runs: int) -> tuple[list[float], int]:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "VALUES ('bench', 'UTC', 'en', now(), now())"
            )
        )
        conn.execute(
            text(
                "INSERT INTO notification (patient_id, category, context, idempotency_key, state, not_before, "
                "expires_at, attempt_count, created_at, updated_at) "
                "SELECT 1, 'appointment_reminder', '{}', 'f' || g, 'pending', "
                ":now + ((g % 43200) || ' minutes')::interval + interval '1 minute', NULL, 0, :now, :now "
                "FROM generate_series(1, :n) g"
            ),
            {"now": NOW, "n": size},
        )
        conn.execute(
            text(
                "INSERT INTO notification (patient_id, category, context, idempotency_key, state, not_before, "
                "attempt_count, created_at, updated_at) "
                "SELECT 1, 'appointment_reminder', '{}', 'd' || g, 'pending', :now - interval '1 minute', "
                "0, :now, :now "
                "FROM generate_series(1, :n) g"
            ),
            {"now": NOW, "n": DUE},
        )
        conn.execute(text("ANALYZE notification"))
    clock = FrozenClock(NOW)
    timings = []
    for _ in range(runs):
        with engine.begin() as conn:
            conn.execute(text("UPDATE notification SET enqueued_at = NULL WHERE idempotency_key LIKE 'd%'"))
        queued: list[int] = []
        t0 = time.perf_counter()
        relay(
            engine,
            clock,
            queued.extend,
            grace=timedelta(seconds=10),
            requeue_after=timedelta(minutes=15),
            batch_size=500,
        )
        timings.append(time.perf_counter() - t0)
        assert len(queued) == DUE, len(queued)
    return timings, pages(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = {}
    for size in args.sizes:
        t0 = time.perf_counter()
        timings, touched = measure(size, args.runs)
        results[size] = statistics.median(timings)
        print(
            f"{size:>9,} future rows + {DUE} due: tick median {results[size] * 1000:7.2f} ms, "
            f"{touched} buffer pages touched by the scans "
            f"(p90 {sorted(timings)[int(len(timings) * 0.9) - 1] * 1000:.2f} ms; "
            f"setup+runs {time.perf_counter() - t0:.0f} s)"
        )
    baseline = results[args.sizes[0]]
    for size in args.sizes[1:]:
        print(
            f"ratio {size:,} / {args.sizes[0]:,} = {results[size] / baseline:.2f}x "
            f"(rows ratio {size / args.sizes[0]:.0f}x)"
        )


if __name__ == "__main__":
    main()
