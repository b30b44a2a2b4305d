"""/metrics at 1,000,000 notifications (PostgreSQL): the old scrape-time GROUP BY vs the rollup.

A scratch database gets N notifications (default 1,000,000; 1% open: pending, deferred, retrying, sending) with
their whole history, set-based in SQL: every state change in ``notification_event`` (about 3.2 per row) and every
provider call in ``delivery_attempt`` (about 0.9 per row; some rows first got a retry answer from the other push
provider).

- before: the collector as it was (a GROUP BY over every notification with a correlated last-attempt lookup, and
  an aggregate join over every attempt), through a registry like the app's; median and max of a few scrapes.
- the rollup: its first tick (counting the existing logs set-based, as after the upgrade), then an incremental
  tick after a burst of 10,000 changes (rows settling, receipts, new attempts).
- after: ``GET /metrics`` through the FastAPI app (TestClient, Redis broker for the queue depth), median and max
  of ~20 scrapes; and the collector alone. The two scrapes must report exactly the same samples.

    .venv/bin/python -m bench.metrics [--notifications 1000000] [--scrapes 20] [--before-scrapes 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlmodel import col

from bench.harness import REDIS, forget_namespace, scratch_database
from worker.bootstrap import App, build_app
from worker.db import session_scope
from worker.models import DeliveryAttempt, Notification
from worker.settings import load_settings
from worker.web.app import create_web_app
from worker.web.metrics_collector import build_registry

PATIENTS = 10_000
CATEGORIES = ("care_team_message", "appointment_reminder", "survey_reminder", "account_notice", "marketing")

#: Per mille of the notifications in each state (the first five are open: counted live at scrape time).
STATE_MIX = (
    ("pending", 6),  # 5 per mille scheduled for later, 1 due
    ("deferred", 2),
    ("retrying", 1),
    ("sending", 1),
    ("sent", 600),
    ("delivered", 250),
    ("suppressed", 50),
    ("failed", 40),
    ("expired", 30),
    ("cancelled", 20),
)

#: Each state's history: (step, from_state, to_state). Rows that were sent go through 'sending'.
PATHS = {
    "pending": [],
    "deferred": [("pending", "sending"), ("sending", "deferred")],
    "retrying": [("pending", "sending"), ("sending", "retrying")],
    "sending": [("pending", "sending")],
    "sent": [("pending", "sending"), ("sending", "sent")],
    "delivered": [("pending", "sending"), ("sending", "sent"), ("sent", "delivered")],
    "suppressed": [("pending", "sending"), ("sending", "suppressed")],
    "failed": [("pending", "sending"), ("sending", "failed")],
    "expired": [("pending", "expired")],
    "cancelled": [("pending", "cancelled")],
}
#: States whose rows made a provider call, and the outcome of their last one.
LAST_OUTCOME = {"sent": "accepted", "delivered": "accepted", "failed": "failed", "retrying": "retry", "sending": None}


def _state_case() -> str:
    """``CASE`` mapping ``g % 1000`` to a state according to STATE_MIX."""
    arms, upper = [], 0
    for state, per_mille in STATE_MIX:
        upper += per_mille
        arms.append(f"WHEN g % 1000 < {upper} THEN '{state}'")
    assert upper == 1000
    return "CASE " + " ".join(arms) + " END"


def fill(engine: Engine, n: int) -> dict[str, int]:
    """N notifications with their events and attempts, set-based; returns the row counts."""
    paths = ", ".join(
        f"('{state}', {step}, '{src}', '{dst}')"
        for state, steps in PATHS.items()
        for step, (src, dst) in enumerate(steps, start=1)
    )
    outcomes = ", ".join(f"('{state}', {repr(o) if o else 'NULL'})" for state, o in LAST_OUTCOME.items())
    categories = ", ".join(f"'{c}'" for c in CATEGORIES)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(
            text(
                "INSERT INTO patient (external_ref, time_zone, locale, created_at, updated_at) "
                "SELECT 'bench-' || g, 'America/New_York', 'en', now(), now() FROM generate_series(1, :p) g"
            ),
            {"p": PATIENTS},
        )
        conn.execute(
            text(
                "INSERT INTO notification (id, patient_id, category, context, idempotency_key, state, not_before, "
                "attempt_count, created_at, updated_at, finished_at) "
                f"SELECT g, 1 + g % :p, (ARRAY[{categories}])[1 + (g / 7) % 5], '{{}}', 'bench:' || g, s.state, "
                "CASE WHEN s.state = 'pending' AND g % 1000 < 5 THEN now() + interval '1 day' "
                "     WHEN s.state IN ('deferred', 'retrying') THEN now() + interval '1 hour' END, "
                "CASE WHEN s.state IN ('pending', 'expired', 'cancelled') THEN 0 ELSE 1 END, "
                "now() - interval '30 days' + (g || ' seconds')::interval, now(), "
                "CASE WHEN s.state IN ('sent', 'delivered', 'suppressed', 'failed', 'expired', 'cancelled') "
                "     THEN now() END "
                f"FROM generate_series(1, :n) g CROSS JOIN LATERAL (SELECT {_state_case()} AS state) s"
            ),
            {"n": n, "p": PATIENTS},
        )
        conn.execute(text("SELECT setval('notification_id_seq', :n)"), {"n": n})
        # History in the order it happened to each row (ids increase along each row's history).
        conn.execute(
            text(
                "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
                "SELECT id, NULL, 'pending', 'created', created_at FROM notification ORDER BY id"
            )
        )
        conn.execute(
            text(
                f"WITH path(state, step, src, dst) AS (VALUES {paths}) "
                "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
                "SELECT n.id, p.src, p.dst, 'bench', n.created_at + (p.step || ' seconds')::interval "
                "FROM notification n JOIN path p ON p.state = n.state ORDER BY p.step, n.id"
            )
        )
        # One call per row that was sent; a tenth of them after a failed first try on the other push provider.
        attempt = (
            "INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, provider_ref, "
            "started_at, duration_ms) "
            "SELECT n.id, ch.channel, {provider}, 'device:1', {outcome}, NULL, n.created_at, 40 "
            f"FROM notification n JOIN (VALUES {outcomes}) o(state, outcome) ON o.state = n.state "
            "CROSS JOIN LATERAL (SELECT (ARRAY['push', 'push', 'sms', 'email', 'inapp'])[1 + n.id % 5] AS channel) ch "
            "{where} ORDER BY n.id"
        )
        by_channel = (
            "CASE ch.channel WHEN 'push' THEN (CASE WHEN n.id % 2 = 0 THEN 'fcm' ELSE 'apns' END) "
            "WHEN 'sms' THEN 'twilio' WHEN 'email' THEN 'sendgrid' ELSE 'inapp' END"
        )
        conn.execute(
            text(
                attempt.format(
                    provider="CASE WHEN n.id % 2 = 0 THEN 'apns' ELSE 'fcm' END",
                    outcome="'retry'",
                    where="WHERE n.id % 10 = 3 AND ch.channel = 'push'",
                )
            )
        )
        conn.execute(
            text(
                attempt.format(
                    provider=by_channel,
                    outcome="COALESCE(o.outcome, 'accepted')",
                    where="WHERE o.outcome IS NOT NULL OR n.id % 2 = 0",  # half the rows being sent have a call
                )
            )
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
        return {
            table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("notification", "notification_event", "delivery_attempt")
        }


def burst(engine: Engine, n: int) -> int:
    """Up to N changes since the last tick, as delivery and receipts make them (set-based here): every retrying
    and sending row is sent with one more (accepted) call, and sent rows get a delivery receipt. Returns how many."""
    with engine.begin() as conn:
        settled = conn.execute(
            text(
                "WITH picked AS (SELECT id, state FROM notification WHERE state IN ('retrying', 'sending') "
                "  ORDER BY id LIMIT :n FOR UPDATE), "
                "moved AS (UPDATE notification n SET state = 'sent', finished_at = now() FROM picked p "
                "  WHERE n.id = p.id RETURNING n.id, p.state AS old), "
                "calls AS (INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, "
                "  started_at, duration_ms) SELECT id, 'inapp', 'inapp', 'inapp', 'accepted', now(), 30 FROM moved) "
                "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
                "SELECT id, old, 'sent', 'bench burst', now() FROM moved"
            ),
            {"n": n},
        ).rowcount
        delivered = conn.execute(
            text(
                "WITH moved AS (UPDATE notification SET state = 'delivered' "
                "  WHERE id IN (SELECT id FROM notification WHERE state = 'sent' ORDER BY id DESC LIMIT :n) "
                "  RETURNING id) "
                "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
                "SELECT id, 'sent', 'delivered', 'bench receipt', now() FROM moved"
            ),
            {"n": n - settled},
        ).rowcount
    return int(settled + delivered)


class LegacyCollector(Collector):
    """The collector before the rollup, query for query (worker/metrics.py at 495d5a0)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        notifications = GaugeMetricFamily(
            "carenotify_notifications", "by state", labels=["state", "category", "provider"]
        )
        calls = GaugeMetricFamily(
            "carenotify_provider_calls", "calls", labels=["category", "channel", "provider", "outcome"]
        )
        last_attempt = (
            select(func.max(col(DeliveryAttempt.id)))
            .where(col(DeliveryAttempt.notification_id) == col(Notification.id))
            .correlate(Notification)
            .scalar_subquery()
        )
        with session_scope(self.engine) as session:
            by_state = session.execute(
                select(col(Notification.state), col(Notification.category), col(DeliveryAttempt.provider), func.count())
                .select_from(Notification)
                .outerjoin(DeliveryAttempt, col(DeliveryAttempt.id) == last_attempt)
                .group_by(col(Notification.state), col(Notification.category), col(DeliveryAttempt.provider))
            ).all()
            by_call = session.execute(
                select(
                    col(Notification.category),
                    col(DeliveryAttempt.channel),
                    col(DeliveryAttempt.provider),
                    col(DeliveryAttempt.outcome),
                    func.count(),
                )
                .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
                .group_by(
                    col(Notification.category),
                    col(DeliveryAttempt.channel),
                    col(DeliveryAttempt.provider),
                    col(DeliveryAttempt.outcome),
                )
            ).all()
        for state, category, provider, count in by_state:
            notifications.add_metric([str(state), str(category), provider or "none"], float(count))
        for category, channel, provider, outcome, count in by_call:
            calls.add_metric([str(category), str(channel), str(provider), str(outcome)], float(count))
        yield notifications
        yield calls


def samples(payload: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(payload)
        for s in family.samples
        if s.name in ("carenotify_notifications", "carenotify_provider_calls") and s.value
    }


def timed(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    timings, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        timings.append((time.perf_counter() - t0) * 1000)
    return timings, result


def report(label: str, timings: list[float]) -> None:
    median, worst = statistics.median(timings), max(timings)
    print(f"  {label:<52} median {median:9.2f} ms   max {worst:9.2f} ms  ({len(timings)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--notifications", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--before-scrapes", type=int, default=5)
    parser.add_argument("--burst", type=int, default=10_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    namespace = f"carenotify-bench-{uuid.uuid4().hex[:8]}"
    with scratch_database() as url:
        settings = load_settings(database_url=url, broker="redis", redis_url=REDIS, redis_namespace=namespace)
        app: App = build_app(settings)
        try:
            t0 = time.perf_counter()
            rows = fill(app.engine, args.notifications)
            print(
                f"filled in {time.perf_counter() - t0:.1f} s: "
                + ", ".join(f"{count:,} {table}" for table, count in rows.items())
            )
            run(app, args)
        finally:
            app.close()
            forget_namespace(namespace)


def run(app: App, args: argparse.Namespace) -> None:
    legacy = CollectorRegistry(auto_describe=False)
    legacy.register(LegacyCollector(app.engine))
    before, old_payload = timed(lambda: generate_latest(legacy).decode(), args.before_scrapes)

    first, moved = timed(app.roll_up_metrics, 1)
    new_registry = build_registry(app)
    assert samples(generate_latest(new_registry).decode()) == samples(old_payload), "rollup != old scrape"
    changes = burst(app.engine, args.burst)
    incremental, moved_burst = timed(app.roll_up_metrics, 1)
    with TestClient(create_web_app(app)) as client:
        client.get("/metrics")  # warm: the app's registry is built on the first scrape
        after, response = timed(lambda: client.get("/metrics"), args.scrapes)
        collector, _ = timed(lambda: generate_latest(new_registry), args.scrapes)
    assert response.status_code == 200
    check_before, old_payload = timed(lambda: generate_latest(legacy).decode(), 1)
    assert samples(response.text) == samples(old_payload), "rollup != old scrape after the burst"
    with app.engine.connect() as conn:
        open_rows = conn.execute(
            text("SELECT count(*) FROM notification WHERE state IN ('pending', 'deferred', 'retrying', 'sending')")
        ).scalar_one()

    print(f"/metrics with {args.notifications:,} notifications ({open_rows:,} open), PostgreSQL:")
    report("before: old collector (GROUP BY over every row)", before + check_before)
    report("after: GET /metrics (FastAPI app, Redis queue depth)", after)
    report("after: the collector alone", collector)
    print(
        f"  speed-up (medians, GET /metrics vs old collector): "
        f"{statistics.median(before + check_before) / statistics.median(after):,.0f}x; samples identical to the "
        "old scrape's, before and after the burst"
    )
    print("rollup (the scheduler's metrics_rollup job):")
    print(
        f"  first tick (counts the existing logs set-based, as after the upgrade): {first[0] / 1000:.1f} s, "
        f"{moved:,} log ids"
    )
    print(f"  tick after a burst of {changes:,} changes: {incremental[0]:.1f} ms, {moved_burst:,} log ids")


if __name__ == "__main__":
    main()
