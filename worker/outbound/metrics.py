"""What ``/metrics`` says about outbound webhooks: each endpoint's health and its open deliveries.

Read at scrape time from the endpoints (a handful of rows) and the open deliveries (through the partial index that
holds only ``pending`` and ``sending`` rows); delivered ones are never walked.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from worker.clock import Clock
from worker.models_outbound import OPEN_DELIVERY, WebhookDelivery, WebhookEndpoint

_E = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_D = WebhookDelivery.__table__  # type: ignore[attr-defined]


class WebhookCollector(Collector):
    """``carenotify_webhook_endpoint_up``, ``..._failing_seconds``, ``..._deliveries_open``, ``..._due``."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "host"]
        up = GaugeMetricFamily(
            "carenotify_webhook_endpoint_up",
            "1 while an outbound-webhook endpoint is enabled, 0 once disabled; `reason` says why "
            "(operator, gone: it answered 410, failing: nothing delivered for webhooks.disable_after_hours)",
            labels=[*labels, "reason"],
        )
        failing = GaugeMetricFamily(
            "carenotify_webhook_endpoint_failing_seconds",
            "Seconds since every delivery to the endpoint started failing (0 while the last one got through)",
            labels=labels,
        )
        open_ = GaugeMetricFamily(
            "carenotify_webhook_deliveries_open",
            "Deliveries not yet delivered nor given up, per endpoint (pending, being sent, or waiting to retry)",
            labels=labels,
        )
        now = self.clock.now()
        with self.engine.connect() as conn:
            endpoints = conn.execute(
                select(_E.c.id, _E.c.url, _E.c.enabled, _E.c.disabled_reason, _E.c.failing_since).order_by(_E.c.id)
            ).all()
            counts: dict[int, int] = {
                int(endpoint_id): int(n)
                for endpoint_id, n in conn.execute(
                    select(_D.c.endpoint_id, func.count()).where(text(OPEN_DELIVERY)).group_by(_D.c.endpoint_id)
                )
            }
        for endpoint_id, url, enabled, reason, since in endpoints:
            keys = [str(endpoint_id), urlsplit(url).hostname or ""]
            up.add_metric([*keys, "" if enabled else reason or "operator"], 1.0 if enabled else 0.0)
            failing.add_metric(keys, max((now - since).total_seconds(), 0.0) if since else 0.0)
            open_.add_metric(keys, float(counts.get(endpoint_id, 0)))
        yield up
        yield failing
        yield open_
