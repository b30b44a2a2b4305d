"""The APScheduler process: periodic jobs that find due work in the database and enqueue it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from worker.bootstrap import App

log = structlog.get_logger(__name__)

S = TypeVar("S", bound=BaseScheduler)


def relay_outbox(app: App) -> int:
    """Queue what is committed but not queued, scheduled rows that became due, and orphaned claims."""
    return app.relay()


def launch_campaigns(app: App) -> int:
    """Fan out the campaigns whose launch time has come (chunked, resumable, safe with two schedulers)."""
    return app.launch_campaigns()


def roll_up_metrics(app: App) -> int:
    """Fold the notification and attempt logs' new rows into the counts /metrics reads (settled states, calls)."""
    return app.roll_up_metrics()


def purge_old_records(app: App) -> int:
    """Delete what is past its retention (old settled notifications with their logs, expired Idempotency-Keys and
    webhook receipts, consent-ledger entries long replaced, outbound-webhook deliveries settled long ago), a small
    batch per transaction (worker/retention)."""
    return sum(app.retention_job.tick().values())


def dispatch_webhooks(app: App) -> int:
    """Read the change logs past the watermark into outbound-webhook deliveries; queue a sender per endpoint."""
    return app.dispatch_webhooks()


def escalate_care_team(app: App) -> int:
    """Follow-ups for care-team messages still unread after ``care_team.escalate_after`` (FOR UPDATE SKIP LOCKED)."""
    return app.escalate_care_team()


def add_jobs(scheduler: S, app: App) -> S:
    """Register every periodic job. One instance of each at a time; a late run is coalesced, not stacked."""
    cfg = app.settings
    jobs: tuple[tuple[Callable[[App], int], float, str], ...] = (
        (relay_outbox, cfg.outbox.relay_interval_seconds, "relay_outbox"),
        (launch_campaigns, cfg.campaigns.scan_interval_seconds, "launch_campaigns"),
        (roll_up_metrics, cfg.metrics.rollup_interval_seconds, "metrics_rollup"),
        (purge_old_records, cfg.retention.interval_seconds, "retention"),
        (dispatch_webhooks, cfg.webhooks.dispatch_interval_seconds, "webhooks_dispatch"),
        (escalate_care_team, cfg.care_team.escalation_interval_seconds, "care_team_escalation"),
    )
    for job, seconds, job_id in jobs:
        scheduler.add_job(
            job,
            "interval",
            seconds=seconds,
            args=[app],
            id=job_id,
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )
    return scheduler


def run_blocking(app: App) -> None:
    """The ``scheduler`` process: blocks until SIGINT/SIGTERM."""
    scheduler = add_jobs(BlockingScheduler(timezone="UTC"), app)
    log.info("scheduler.start", jobs=[job.id for job in scheduler.get_jobs()])
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("scheduler.stop")
