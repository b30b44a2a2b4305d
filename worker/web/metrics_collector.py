"""Prometheus metrics, read from the database and the broker at scrape time.

Counting in the database (not in per-process counters) means every web process reports the same totals
however many workers did the sending, and a restart loses nothing. A scrape never walks the notification table:
settled notifications and provider calls come from the rollup the scheduler keeps (:mod:`worker.metrics.rollup`,
a few rows, behind by at most about one ``metrics.rollup_interval_seconds``), and open notifications (the few
that can still move) are counted live through the partial index that covers only them. Each :class:`App` gets
its own :class:`CollectorRegistry`, so two apps in one process (tests) never share or collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.bootstrap import App
from worker.broker import queue_depths
from worker.metrics.rollup import open_counts, read_counts, short_plans
from worker.outbound.metrics import WebhookCollector

NOTIFICATIONS_HELP = (
    "Notifications by state, category and the provider of their last attempt ('none' if never sent). "
    "Open states (pending, deferred, retrying, sending) are counted live; settled ones (sent, delivered, "
    "suppressed, failed, expired, cancelled) come from the scheduler's rollup and lag by up to one "
    "metrics.rollup_interval_seconds (5 s by default)"
)
PROVIDER_CALLS_HELP = (
    "Provider calls (delivery attempts) by category, channel, provider and outcome, from the scheduler's "
    "rollup: they lag by up to one metrics.rollup_interval_seconds (5 s by default)"
)


class DatabaseCollector(Collector):
    """Notifications by state, category and the provider that settled them; provider calls; queue depth."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        notifications = GaugeMetricFamily(
            "carenotify_notifications",
            NOTIFICATIONS_HELP,
            labels=["state", "category", "provider"],
        )
        calls = GaugeMetricFamily(
            "carenotify_provider_calls",
            PROVIDER_CALLS_HELP,
            labels=["category", "channel", "provider", "outcome"],
        )
        depth = GaugeMetricFamily(
            "carenotify_queue_depth", "Messages waiting on the broker per queue", labels=["queue"]
        )

        with self.app.engine.connect() as conn:
            short_plans(conn)
            settled, by_call = read_counts(conn)
            live = list(open_counts(conn))
        for (state, category, provider), count in [*live, *settled]:
            notifications.add_metric([state, category, provider], float(count))
        for (category, channel, provider, outcome), count in by_call:
            calls.add_metric([category, channel, provider, outcome], float(count))
        for queue, waiting in sorted(queue_depths(self.app.broker).items()):
            depth.add_metric([queue], float(waiting))
        yield notifications
        yield calls
        yield depth


def build_registry(app: App) -> CollectorRegistry:
    """A registry of this app's own (not prometheus-client's process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(app))
    registry.register(WebhookCollector(app.engine, app.clock))
    return registry
