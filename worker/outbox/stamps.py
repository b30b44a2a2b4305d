"""Stamping rows as queued off the request path.

A trigger commits its row (one statement), then puts its message on the broker. Until the row is stamped
``enqueued_at``, the relay treats it as possibly never queued and queues it after the grace period: that is
what recovers a process killed between its commit and its enqueue. The stamp itself can wait a moment, so it
is written for many rows at once by a background thread (``flush_every``), not once per trigger. A process
that dies before flushing leaves some rows unstamped: the relay queues those once more after the grace
period, a duplicate message the worker's claim makes harmless.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import partial

import structlog
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import pyformat, retry_transient, run_raw, session_scope
from worker.models import Notification

log = structlog.get_logger(__name__)

_STAMP_PG = pyformat(
    "UPDATE notification SET enqueued_at = :now WHERE id = ANY(CAST(:ids AS bigint[])) AND enqueued_at IS NULL "
    "RETURNING id"
)


class EnqueueStamps:
    def __init__(self, engine: Engine, clock: Clock, *, flush_every: timedelta = timedelta(milliseconds=200)) -> None:
        self._engine = engine
        self._clock = clock
        self._every = flush_every.total_seconds()
        self._pending: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def add(self, notification_id: int) -> None:
        with self._lock:
            self._pending.append(notification_id)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="enqueue-stamps", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Stamp every row queued since the last flush; returns how many were stamped."""
        with self._lock:
            ids, self._pending = self._pending, []
        if not ids:
            return 0
        try:
            return retry_transient(partial(self._stamp, ids), seconds=2.0)
        except Exception as exc:  # the relay's grace covers what stays unstamped
            log.warning("outbox.stamp_failed", rows=len(ids), error=type(exc).__name__)
            return 0

    def _stamp(self, ids: list[int]) -> int:
        if self._engine.dialect.name == "postgresql":
            return len(run_raw(self._engine, _STAMP_PG, {"ids": ids, "now": self._clock.now()}))
        with session_scope(self._engine) as session:
            result = session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids), col(Notification.enqueued_at).is_(None))
                .values(enqueued_at=self._clock.now())
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def _run(self) -> None:
        while not self._wake.wait(self._every):
            self.flush()

    def close(self) -> None:
        """Flush what is left and stop the thread (the process is exiting)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
