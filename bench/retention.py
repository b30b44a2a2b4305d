"""Retention on PostgreSQL: purging 1,000,000 old settled notifications (with ~3M events and ~1M provider calls)
while deliveries run, against the same deliveries with no purge.

A scratch database gets N notifications settled 500 days ago (set-based, ``generate_series``), their events and
attempts; the /metrics rollup counts them first (so every purge batch also takes its counts back, as in
production). Then, twice for the same number of seconds:

- baseline: ``--threads`` delivery loops, each submitting a care-team notice and delivering it at once (the whole
  database path: insert, claim + every send-time fact, the provider's answer, the settle) to an in-process
  provider, one after the other; the time of each is recorded;
- during: the same loops while ``carenotify db purge`` (its own process, as the scheduler is) deletes the backlog
  batch by batch.

Reported: rows/s purged (notifications, and all rows), delivery latency p50/p99/max in both runs, and, sampled
every 20 ms from ``pg_stat_activity``, whether a delivery's connection ever waited on a lock.

    .venv/bin/python -m bench.retention [--notifications 1000000] [--threads 2] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.harness import percentile, quiet_machine, scratch_database
from integrations.base import Provider
from integrations.fake import ScriptedProvider
from worker.bootstrap import App, build_app
from worker.categories import Category, Channel
from worker.delivery import deliver
from worker.patients import upsert_patient
from worker.settings import load_settings
from worker.states import State

PATIENTS = 10_000


def fill(engine: Engine, n: int) -> dict[str, int]:
    """N notifications settled 500 days ago: 3 events each (created, claimed, settled), one attempt each."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "SELECT 'old-' || g, 'America/New_York', 'en', now(), now() FROM generate_series(1, :p) g"
            ),
            {"p": PATIENTS},
        )
        conn.execute(
            text(
                "INSERT INTO notification (id, patient_id, category, context, idempotency_key, state, reason, "
                "attempt_count, created_at, updated_at, finished_at) "
                "SELECT g, 1 + g % :p, (ARRAY['care_team_message', 'appointment_reminder', 'marketing'])[1 + g % 3], "
                "'{}', 'old:' || g, "
                "(ARRAY['sent', 'delivered', 'suppressed', 'expired'])[1 + (g / 3) % 4], 'bench', 1, "
                "now() - interval '500 days' + (g || ' milliseconds')::interval, now() - interval '500 days', "
                "now() - interval '500 days' + (g || ' milliseconds')::interval + interval '1 second' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": n, "p": PATIENTS},
        )
        conn.execute(text("SELECT setval('notification_id_seq', :n)"), {"n": n})
        conn.execute(
            text(
                "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
                "SELECT n.id, s.src, s.dst, 'bench', n.created_at FROM notification n "
                "CROSS JOIN LATERAL (VALUES (1, NULL, 'pending'), (2, 'pending', 'sending'), (3, 'sending', n.state)) "
                "AS s(step, src, dst) ORDER BY s.step, n.id"
            )
        )
        conn.execute(
            text(
                "INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, started_at, "
                "duration_ms) SELECT id, 'push', 'fcm', 'device:1', 'accepted', created_at, 40 FROM notification "
                "ORDER BY id"
            )
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("notification", "notification_event", "delivery_attempt")
        }


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    lock_waits: Counter[str] = field(default_factory=Counter)
    #: Samples in which a delivery connection waited on a lock the purge's process held.
    blocked_by_purge: int = 0
    samples: int = 0

    def line(self, label: str) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        return (
            f"{label}: {len(ms)} deliveries ({self.sent} sent), latency p50 {percentile(ms, 0.5):.2f} ms, "
            f"p99 {percentile(ms, 0.99):.2f} ms, max {ms[-1]:.2f} ms, mean {statistics.fmean(ms):.2f} ms; "
            f"delivery connections waiting on a lock: {sum(self.lock_waits.values())} of {self.samples} samples"
            + (f" {dict(self.lock_waits)}" if self.lock_waits else "")
            + f", on one the purge held: {self.blocked_by_purge}"
        )


def deliveries(app: App, patients: list[int], stop: threading.Event, run: Run, threads: int) -> list[threading.Thread]:
    lock = threading.Lock()

    def loop(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            nid = app.submit(
                patient_id=patients[(index * 7919 + n) % len(patients)],
                category=Category.CARE_TEAM_MESSAGE,
                idempotency_key=f"bench:{index}:{n}:{uuid.uuid4().hex[:6]}",
                channels=[Channel.INAPP],
            ).notification_id
            report = deliver(app.deps, nid)
            elapsed = time.perf_counter() - started
            with lock:
                run.latencies.append(elapsed)
                run.sent += report.state is State.SENT

    started = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for thread in started:
        thread.start()
    return started


def watch_locks(engine: Engine, stop: threading.Event, run: Run) -> threading.Thread:
    """Sample the delivery connections (application_name 'bench-delivery') waiting on a lock, and who holds it
    (the purge's connections are 'bench-purge')."""

    def loop() -> None:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not stop.is_set():
                rows = conn.execute(
                    text(
                        "SELECT a.wait_event, EXISTS (SELECT 1 FROM pg_stat_activity b "
                        "  WHERE b.pid = ANY(pg_blocking_pids(a.pid)) AND b.application_name = 'bench-purge') "
                        "FROM pg_stat_activity a WHERE a.application_name = 'bench-delivery' "
                        "AND a.wait_event_type = 'Lock'"
                    )
                ).all()
                run.samples += 1
                run.lock_waits.update(str(r[0]) for r in rows)
                run.blocked_by_purge += any(r[1] for r in rows)
                time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def providers() -> dict[Channel, list[Provider]]:
    return {c: [ScriptedProvider(name=f"fake-{c}", channel=c)] for c in Channel}


def purge_process(url: str, batch_size: int) -> Counter[str]:
    """``carenotify db purge`` in its own process (as the scheduler's job runs in its own)."""
    env = {
        **os.environ,
        "CARENOTIFY_DATABASE_URL": url + ("&" if "?" in url else "?") + "application_name=bench-purge",
        "CARENOTIFY_RETENTION__BATCH_SIZE": str(batch_size),
    }
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "db", "purge"], env=env, capture_output=True, text=True, check=True
    )
    return Counter(json.loads(done.stdout)["deleted"])


def measure(
    app: App,
    watcher: Engine,
    patients: list[int],
    threads: int,
    *,
    seconds: float = 0.0,
    purge: str | None = None,
    batch_size: int = 500,
) -> tuple[Run, Counter[str], float]:
    run = Run()
    stop = threading.Event()
    workers = deliveries(app, patients, stop, run, threads)
    watching = watch_locks(watcher, stop, run)
    purged: Counter[str] = Counter()
    started = time.perf_counter()
    if purge is not None:
        purged = purge_process(purge, batch_size)
    else:
        time.sleep(seconds)
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in [*workers, watching]:
        thread.join()
    return run, purged, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"machine busy share before: {quiet_machine():.2f}")
    with scratch_database() as url:
        delivery_url = url + ("&" if "?" in url else "?") + "application_name=bench-delivery"
        settings = load_settings(database_url=delivery_url, broker="memory", retention={"batch_size": args.batch_size})
        app = build_app(settings, providers=providers())
        purge_app = build_app(load_settings(database_url=url, broker="memory"), providers=providers())
        try:
            t0 = time.perf_counter()
            counts = fill(purge_app.engine, args.notifications)
            print(f"seeded {counts} in {time.perf_counter() - t0:.0f} s")
            t0 = time.perf_counter()
            purge_app.roll_up_metrics()
            print(
                "rollup's first tick (counts them, so each purge batch takes its counts back): "
                f"{time.perf_counter() - t0:.1f} s"
            )
            patients = [
                upsert_patient(app.engine, app.clock, external_ref=f"live-{i}", time_zone="America/New_York")
                for i in range(50)
            ]
            due = purge_app.retention_job.due()
            print(f"due: {due}")
            baseline, _, _ = measure(app, purge_app.engine, patients, args.threads, seconds=20.0)
            during, purged, elapsed = measure(
                app, purge_app.engine, patients, args.threads, purge=url, batch_size=args.batch_size
            )
            total = sum(purged.values())
            print(
                f"purged {dict(purged)} in {elapsed:.1f} s: {purged['notification'] / elapsed:,.0f} notifications/s, "
                f"{total / elapsed:,.0f} rows/s ({args.batch_size} notifications per transaction)"
            )
            print(baseline.line("baseline (no purge, 20 s)"))
            print(during.line(f"during the purge ({elapsed:.0f} s)"))
            after = purge_app.retention_job.due()
            assert after["notification"] == 0, after
        finally:
            app.close()
            purge_app.close()


if __name__ == "__main__":
    main()
