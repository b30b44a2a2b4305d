"""The scheduler's ``retention`` job, and ``carenotify db purge [--dry-run]``.

Each tick does a bounded amount of work (``retention.max_per_tick`` rows examined per table) in short
transactions of ``retention.batch_size`` rows, so it never holds a lock for long nor keeps the delivery path
waiting: deliveries touch only open notifications, and a purge batch locks only settled ones (``SKIP LOCKED``).
A walk that reaches the young end of its table starts over at its next tick; where it had got to is kept in
memory (a restarted scheduler starts from the beginning, which only costs reading what is left).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from sqlalchemy.engine import Engine

from worker.clock import Clock
from worker.retention import ledger, notifications, web_records, webhooks
from worker.retention.notifications import Step
from worker.settings import Settings

log = structlog.get_logger(__name__)

#: Every table the purge deletes from, in the order it reports them.
TABLES = (
    "notification",
    "notification_event",
    "delivery_attempt",
    "idempotency_record",
    "webhook_receipt",
    "consent_event",
    "care_pause_event",
    *webhooks.TABLES,
)

_YEAR = timedelta(days=365.25)


class Retention:
    """Deletes what is past its retention: old settled notifications (with their logs), expired web records,
    consent-ledger entries no longer in force for ``consent_years``, and outbound-webhook deliveries settled more
    than ``webhooks.retention_days`` ago (with the events no delivery needs any more)."""

    def __init__(self, engine: Engine, clock: Clock, settings: Settings) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        #: Where each walk got to (the last id looked at).
        self._after: dict[str, int] = {"notification": 0, "consent_event": 0, "care_pause_event": 0}

    def cutoffs(self) -> tuple[datetime, datetime]:
        """Notifications settled before the first go; ledger entries replaced before the second may go."""
        now = self.clock.now()
        cfg = self.settings.retention
        return now - timedelta(days=cfg.days), now - cfg.consent_years * _YEAR

    def tick(self, *, limit: int | None = None) -> Counter[str]:
        """One run: at most ``limit`` (default ``retention.max_per_tick``) rows examined per table; rows deleted
        per table."""
        cfg = self.settings.retention
        budget = limit or cfg.max_per_tick
        notified_before, ledger_before = self.cutoffs()
        deleted: Counter[str] = Counter()

        def notification_step(after: int) -> Step:
            return notifications.purge_step(self.engine, notified_before, after=after, batch_size=cfg.batch_size)

        deleted.update(self._walk("notification", notification_step, budget))
        for table in ledger.LEDGERS:

            def ledger_step(after: int, table: str = table) -> Step:
                return ledger.purge_step(self.engine, table, ledger_before, after=after, batch_size=cfg.batch_size)

            deleted.update(self._walk(table, ledger_step, budget))
        web = web_records.purge_expired(
            self.engine, self.clock, self.settings.web, batch_size=cfg.batch_size, limit=budget
        )
        deleted.update({"idempotency_record": web.idempotency_keys, "webhook_receipt": web.webhook_receipts})
        deleted.update(
            webhooks.purge_settled(
                self.engine,
                webhooks.cutoff(self.clock.now(), self.settings.webhooks),
                batch_size=cfg.batch_size,
                limit=budget,
            )
        )
        deleted = +deleted  # drop zeros
        if deleted:
            log.info("retention.purged", **dict(sorted(deleted.items())))
        return deleted

    def _walk(self, table: str, step: Callable[[int], Step], budget: int) -> Counter[str]:
        """Batches from where the walk stopped until ``budget`` rows were examined or it reached the young end
        (then the next walk starts from the beginning)."""
        deleted: Counter[str] = Counter()
        examined = 0
        while examined < budget:
            done = step(self._after[table])
            deleted.update(done.deleted)
            examined += done.examined
            self._after[table] = 0 if done.finished else done.last_id
            if done.finished:
                break
        return deleted

    def purge_all(self) -> Counter[str]:
        """Everything due, now (``carenotify db purge``): ticks until one deletes nothing, each walk from the start."""
        self._after = dict.fromkeys(self._after, 0)
        total: Counter[str] = Counter()
        while True:
            done = self.tick(limit=10**12)
            if not done:
                return total
            total.update(done)

    def due(self) -> dict[str, int]:
        """What :meth:`purge_all` would delete now, per table (``carenotify db purge --dry-run``)."""
        notified_before, ledger_before = self.cutoffs()
        counts = {
            **notifications.due_counts(self.engine, notified_before),
            **web_records.expired_counts(self.engine, self.clock, self.settings.web),
            **ledger.due_counts(self.engine, ledger_before),
            **webhooks.due_counts(self.engine, webhooks.cutoff(self.clock.now(), self.settings.webhooks)),
        }
        return {table: counts[table] for table in TABLES}
