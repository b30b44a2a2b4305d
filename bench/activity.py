"""A patient's activity page on PostgreSQL with 1 million notifications in the table (goal: <= 50 ms a page).

A fresh database gets, by generate_series: 20,000 patients; 1,000,000 notifications (a heavy patient holds
20,000 of them, the rest spread evenly), one provider call each; 200,000 consent-ledger rows (2,000 the heavy
patient's). Pages of ``patient_activity`` (the service behind the API, the CLI and the console: both sources'
keyset reads, the merge, the page's provider calls) are timed: the heavy patient's first pages, her pages from
deep in her history (cursor 15,000 items down), and the first page of random patients. The same deep pages are
timed again without migration 0055's ``ix_notification_patient_created`` to show what the index buys.

Wall times include Python and the round trips, so they move with the machine's load (the figures were taken
with other processes busy); each page's statements are also run under EXPLAIN (ANALYZE, BUFFERS), whose server
time and shared buffers touched are the machine-independent cost.

    .venv/bin/python -m bench.activity [--notifications 1000000] [--limit 25 50] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from bench.harness import scratch_database
from worker.activity import patient_activity
from worker.activity.cursor import NOTIFICATION_RANK, Position, encode_cursor
from worker.db import make_engine

BASE = datetime(2025, 1, 1, tzinfo=UTC)
PATIENTS = 20_000
HEAVY = 1  # the patient id with the long history
HEAVY_SHARE = 20_000
DEEP = 15_000


def seed(engine: Engine, notifications: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, phone_e164, created_at, updated_at) "
                "SELECT 'pt-' || g, 'America/New_York', 'en', '+1312555' || lpad((g % 10000)::text, 4, '0'), "
                ":base, :base FROM generate_series(1, :n) g"
            ),
            {"base": BASE, "n": PATIENTS},
        )
        # Notification g is created g seconds after BASE: every patient's history interleaves with the others'.
        conn.execute(
            text(
                "INSERT INTO notification (patient_id, category, context, idempotency_key, state, reason, "
                "attempt_count, created_at, updated_at, finished_at) "
                "SELECT CASE WHEN g % (:total / :heavy) = 0 THEN :heavy_id ELSE 2 + (g % (:patients - 1)) END, "
                "(ARRAY['care_team_message','appointment_reminder','survey_reminder','account_notice',"
                "'marketing'])[1 + g % 5], '{}', 'b' || g, "
                "(ARRAY['sent','delivered','suppressed','failed'])[1 + g % 4], 'accepted: push (1 target)', 1, "
                ":base + (g || ' seconds')::interval, :base + (g || ' seconds')::interval, "
                ":base + (g || ' seconds')::interval "
                "FROM generate_series(1, :total) g"
            ),
            {"base": BASE, "total": notifications, "heavy": HEAVY_SHARE, "heavy_id": HEAVY, "patients": PATIENTS},
        )
        conn.execute(
            text(
                "INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, provider_ref, "
                "error_code, started_at, duration_ms) "
                "SELECT id, 'push', 'fcm', 'device:1', CASE WHEN id % 10 = 0 THEN 'failed' ELSE 'accepted' END, "
                "'ref-' || id, CASE WHEN id % 10 = 0 THEN 'UNREGISTERED' END, created_at, 40 FROM notification"
            )
        )
        conn.execute(
            text(
                "INSERT INTO consent_event (patient_id, channel, category, granted, source, actor, detail, at) "
                "SELECT CASE WHEN g % 100 = 0 THEN :heavy_id ELSE 2 + (g % (:patients - 1)) END, "
                "(ARRAY['push','sms','email'])[1 + g % 3], 'marketing', g % 2 = 0, 'app', 'api:care-platform', "
                "NULL, :base + ((g * 5) || ' seconds')::interval FROM generate_series(1, 200000) g"
            ),
            {"base": BASE, "heavy_id": HEAVY, "patients": PATIENTS},
        )
        conn.execute(text("ANALYZE"))


def timed(call: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and this process's CPU milliseconds per call (CPU: Python and the driver, whatever the load)."""
    call()  # warm the connection pool and the plan cache
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def summary(measured: tuple[list[float], list[float]]) -> dict[str, float]:
    wall, cpu = sorted(measured[0]), measured[1]
    return {
        "p50_ms": round(statistics.median(wall), 2),
        "p95_ms": round(wall[int(0.95 * (len(wall) - 1))], 2),
        "max_ms": round(wall[-1], 2),
        "client_cpu_p50_ms": round(statistics.median(cpu), 2),
    }


def explained(engine: Engine, call: Callable[[], object]) -> dict[str, float]:
    """Run ``call``, then each SELECT it sent under EXPLAIN (ANALYZE, BUFFERS): server time and buffers, summed."""
    sent: list[tuple[str, object]] = []

    def capture(conn: object, cursor: object, statement: str, parameters: object, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    server_ms, buffers = 0.0, 0
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for statement, parameters in sent:
            row = raw.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters).fetchone()
            assert row is not None
            plan = row[0][0]
            server_ms += float(plan["Execution Time"]) + float(plan["Planning Time"])
            buffers += int(plan["Plan"]["Shared Hit Blocks"]) + int(plan["Plan"]["Shared Read Blocks"])
    return {"statements": len(sent), "server_ms": round(server_ms, 2), "shared_buffers": buffers}


def deep_cursor(engine: Engine) -> str:
    with engine.connect() as conn:
        at, nid = conn.execute(
            text(
                "SELECT created_at, id FROM notification WHERE patient_id = :p "
                "ORDER BY created_at DESC, id DESC OFFSET :n LIMIT 1"
            ),
            {"p": HEAVY, "n": DEEP},
        ).one()
    return encode_cursor(Position(at, NOTIFICATION_RANK, int(nid)))


def walk(engine: Engine, limit: int, pages: int) -> tuple[list[float], list[float]]:
    """The heavy patient's first ``pages`` pages, following next_cursor (each page timed)."""
    wall, cpu = [], []
    cursor = None
    for _ in range(pages):
        t0, c0 = time.perf_counter(), time.process_time()
        page = patient_activity(engine, HEAVY, cursor=cursor, limit=limit)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert len(page.items) == limit
        cursor = page.next_cursor
    return wall, cpu


def measure(engine: Engine, limits: list[int], runs: int) -> dict[str, object]:
    deep = deep_cursor(engine)
    rng = random.Random(7)
    results: dict[str, object] = {}
    for limit in limits:
        walk(engine, limit, 3)  # warm-up
        results[f"limit_{limit}"] = {
            "heavy_patient_first_40_pages": summary(walk(engine, limit, 40)),
            "heavy_patient_deep_page": summary(
                timed(lambda n=limit: patient_activity(engine, HEAVY, cursor=deep, limit=n), runs)
            ),
            "random_patient_first_page": summary(
                timed(lambda n=limit: patient_activity(engine, rng.randint(2, PATIENTS), limit=n), runs)
            ),
            "heavy_patient_deep_page_explained": explained(
                engine, lambda n=limit: patient_activity(engine, HEAVY, cursor=deep, limit=n)
            ),
        }
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_notification_patient_created"))
        conn.execute(text("ANALYZE notification"))
    limit = limits[0]
    results["without_ix_notification_patient_created"] = {
        f"heavy_patient_deep_page_limit_{limit}": summary(
            timed(lambda: patient_activity(engine, HEAVY, cursor=deep, limit=limit), max(20, runs // 10))
        ),
        "explained": explained(engine, lambda: patient_activity(engine, HEAVY, cursor=deep, limit=limit)),
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with scratch_database() as url:
        engine = make_engine(url)
        try:
            t0 = time.perf_counter()
            seed(engine, args.notifications)
            seeded_s = round(time.perf_counter() - t0, 1)
            with engine.connect() as conn:
                counts = {
                    table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                    for table in ("notification", "delivery_attempt", "consent_event", "patient")
                }
                heavy = int(
                    conn.execute(
                        text("SELECT count(*) FROM notification WHERE patient_id = :p"), {"p": HEAVY}
                    ).scalar_one()
                )
            results = measure(engine, args.limit, args.runs)
        finally:
            engine.dispose()
    load = os.getloadavg()[0]
    print(
        json.dumps(
            {
                "load_average_1m": round(load, 2),
                "rows": counts,
                "heavy_patient_notifications": heavy,
                "seed_seconds": seeded_s,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
