"""Prometheus metrics, read from the database and the broker at scrape time.

Counting in the database (not in per-process counters) means every web process reports the same totals
however many workers did the sending, and a restart loses nothing. Each :class:`App` gets its own
:class:`CollectorRegistry`, so two apps in one process (tests) never share or collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import col

from worker.bootstrap import App
from worker.broker import queue_depths
from worker.db import session_scope
from worker.models import DeliveryAttempt, Notification


class DatabaseCollector(Collector):
    """Notifications by state, category and the provider that settled them; provider calls; queue depth."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        notifications = GaugeMetricFamily(
            "carenotify_notifications",
            "Notifications by state, category and the provider of their last attempt ('none' if never sent)",
            labels=["state", "category", "provider"],
        )
        calls = GaugeMetricFamily(
            "carenotify_provider_calls",
            "Provider calls (delivery attempts) by category, channel, provider and outcome",
            labels=["category", "channel", "provider", "outcome"],
        )
        depth = GaugeMetricFamily(
            "carenotify_queue_depth", "Messages waiting on the broker per queue", labels=["queue"]
        )

        last_attempt = (
            select(func.max(col(DeliveryAttempt.id)))
            .where(col(DeliveryAttempt.notification_id) == col(Notification.id))
            .correlate(Notification)
            .scalar_subquery()
        )
        with session_scope(self.app.engine) as session:
            by_state = session.execute(
                select(
                    col(Notification.state),
                    col(Notification.category),
                    col(DeliveryAttempt.provider),
                    func.count(),
                )
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
        for queue, waiting in sorted(queue_depths(self.app.broker).items()):
            depth.add_metric([queue], float(waiting))
        yield notifications
        yield calls
        yield depth


def build_registry(app: App) -> CollectorRegistry:
    """A registry of this app's own (not prometheus-client's process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(app))
    return registry
