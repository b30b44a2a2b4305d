"""Campaign fan-out: recipients/s for a marketing campaign to N patients (default 100k) through the full path
(the scheduler's set-based fan-out in PostgreSQL, ``deliver_batch`` messages on Redis, 2 `carenotify worker`
processes deciding every recipient at send time, the in-app HTTP adapter) to a local sink, against a bare
dramatiq actor (2 processes, same threads) that only POSTs the same number of recipients, in the same chunks,
to the same sink. Same machine, same run.

    .venv/bin/python -m bench.fanout [--recipients 100000] [--threads 4]
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import func, select, text
from sqlmodel import col

from bench.harness import REDIS, bare_workers, carenotify_workers, forget_namespace, scratch_database, wait_for
from bench.sink import Sink
from worker.bootstrap import build_app
from worker.campaigns import create_campaign, launch_campaign
from worker.clock import SystemClock
from worker.db import make_engine, session_scope
from worker.models import Notification
from worker.quiet_hours import MARKETING_WINDOW, next_allowed_instant
from worker.settings import load_settings

CHUNK = 50  # recipients per broker message, ours (delivery.batch_size) and the baseline's
ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Los_Angeles",
    "Pacific/Honolulu",
    "Europe/London",
    "Asia/Tokyo",
    "Australia/Sydney",
]


def daytime_zone() -> str:
    """A zone where it is now inside the marketing window for the next hour, so nobody is held for the morning."""
    now = datetime.now(UTC)
    for name in ZONES:
        zone = ZoneInfo(name)
        local = now.astimezone(zone)
        if next_allowed_instant(now, zone, *MARKETING_WINDOW) == now and local.hour < MARKETING_WINDOW[1].hour - 1:
            return name
    raise SystemExit("no zone in daytime right now; add one to ZONES")


def _report(name: str, sink: Sink, n: int, started: float) -> float:
    elapsed = max(sink.arrivals.values()) - started
    duplicates = sum(sink.received.values()) - len(sink.received)
    rate = len(sink.arrivals) / elapsed
    print(
        f"{name:>10}: {len(sink.arrivals)}/{n} recipients in {elapsed:6.1f} s = {rate:7.1f} recipients/s; "
        f"{duplicates} duplicates"
    )
    return rate


def full_path(n: int, threads: int, pg_url: str, namespace: str) -> float:
    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "SELECT 'bench-' || g, :zone, 'en', now(), now() FROM generate_series(1, :n) g"
            ),
            {"n": n, "zone": daytime_zone()},
        )
    engine.dispose()
    with (
        Sink() as sink,
        carenotify_workers(
            pg_url, namespace, sink, threads=threads, extra_env={"CARENOTIFY_DELIVERY__BATCH_SIZE": str(CHUNK)}
        ),
    ):
        settings = load_settings(
            database_url=pg_url,
            broker="redis",
            redis_url=REDIS,
            redis_namespace=namespace,
            providers={"inapp": ["console"]},
            log_level="WARNING",
            delivery={"batch_size": CHUNK},
        )
        app = build_app(settings, clock=SystemClock())
        try:
            cid = create_campaign(
                app.engine, app.clock, name="bench", template="news", channels=["inapp"], created_by="bench"
            )
            started = time.time()
            launch_campaign(app.engine, app.clock, settings.campaigns, cid)
            created = app.launch_campaigns()  # the scheduler's job: fan-out, chunk by chunk, queued as it goes
            fanned = time.time() - started
            print(
                f"{'fan-out':>10}: {created} notifications created and queued in {fanned:.1f} s "
                f"= {created / fanned:,.0f} recipients/s (set-based SQL, {settings.campaigns.chunk_size} per chunk)"
            )
            wait_for(sink, n)
            rate = _report("carenotify", sink, n, started)
            with session_scope(app.engine) as session:
                states = dict(
                    session.execute(  # type: ignore[arg-type]
                        select(col(Notification.state), func.count()).group_by(col(Notification.state))
                    ).all()
                )
            print(f"{'':>10}  notification states: {states}")
            return rate
        finally:
            app.close()


def bare(n: int, threads: int, namespace: str) -> float:
    with Sink() as sink, bare_workers(namespace, sink, threads=threads) as bare_actor:
        started = time.time()
        keys = [f"bare-{i}" for i in range(n)]
        for start in range(0, n, CHUNK):
            bare_actor.post_batch.send(keys[start : start + CHUNK])
        wait_for(sink, n)
        return _report("baseline", sink, n, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        with scratch_database() as pg_url:
            baseline = bare(args.recipients, args.threads, namespace + "-bare")
            ours = full_path(args.recipients, args.threads, pg_url, namespace)
            print(f"ratio carenotify / bare actor recipients/s = {ours / baseline:.2f}")
    finally:
        forget_namespace(namespace)


if __name__ == "__main__":
    main()
