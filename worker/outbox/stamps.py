"""Stamping rows as queued off the request path.

A trigger commits its row (one statement), then puts its message on the broker. Until the row is stamped
``enqueued_at``, the relay treats it as possibly never queued and queues it after the grace period: that is
what recovers a process killed between its commit and its enqueue. The stamp itself can wait a moment, so it
is written for many rows at once by a background thread (``flush_every``), not once per trigger, and only for
rows still waiting ``hold`` after their trigger (well inside the relay's grace) and still ``pending``: a row a
worker has claimed already needs no stamp (the relay never queues a claimed row while its lease lives), so in
the common case, a notice claimed within milliseconds, the stamp writes nothing, where it used to rewrite
every row (a whole row version and its index entries) after it had been sent. A deferred row is never stamped
either: its deferral cleared ``enqueued_at`` on purpose, so the relay queues it when it comes due.

A stamp must never outlive the message it vouches for. When the broker loses its messages (a Redis restart),
the relay un-stamps every open row (:func:`worker.outbox.relay.forget_enqueued`); a stamp written after that
would hide a lost message for ``requeue_after``. So each row carries the broker's epoch (``broker_epoch``, the
marker :class:`worker.broker.BrokerEpoch` keeps) as last read before its enqueue, and is stamped only if the
epoch read just before the stamp is the same; if it has changed by just after, the stamp is taken back. A
marker missing at both readings is the same reading: the relay that re-creates it forgets every stamp first,
this one included. Not stamping is always safe: the relay queues the row once more after the grace period, a
duplicate message the worker's claim makes harmless (so is a process that dies before flushing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import structlog
from sqlalchemy import ColumnElement, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from worker.clock import Clock
from worker.db import pyformat, retry_transient, run_raw, session_scope
from worker.models import Notification
from worker.states import State

log = structlog.get_logger(__name__)

_STAMP_PG = pyformat(
    "UPDATE notification SET enqueued_at = :now WHERE id = ANY(CAST(:ids AS bigint[])) AND enqueued_at IS NULL "
    "AND state = 'pending' RETURNING id"
)
_UNSTAMP_PG = pyformat(
    "UPDATE notification SET enqueued_at = NULL WHERE id = ANY(CAST(:ids AS bigint[])) AND enqueued_at = :at "
    "AND state = 'pending' RETURNING id"
)
#: The broker's epoch could not be read (the broker is away): nothing is vouched for against it.
UNREADABLE = object()
_UNSEEN = object()


class EnqueueStamps:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        *,
        flush_every: timedelta = timedelta(milliseconds=200),
        hold: timedelta = timedelta(seconds=2),
        broker_epoch: Callable[[], str | None] | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._every = flush_every.total_seconds()
        self._hold = hold.total_seconds()
        self._epoch = broker_epoch
        self._epoch_seen: object = _UNSEEN
        #: (when added, on the monotonic clock; the broker's epoch seen before its enqueue; id), oldest first.
        self._pending: list[tuple[float, object, int]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def epoch_before_enqueue(self) -> object:
        """The broker's epoch as last read (by the last flush; read now the first time): taken before a row's
        enqueue and given back to :meth:`add`, so a loss between the enqueue and the add cannot go unseen."""
        if self._epoch_seen is _UNSEEN:
            self._epoch_seen = self._read_epoch()
        return self._epoch_seen

    def add(self, notification_id: int, epoch: object) -> None:
        """Remember a row whose message was just put on the broker, with :meth:`epoch_before_enqueue`'s answer
        taken before it was."""
        with self._lock:
            self._pending.append((time.monotonic(), epoch, notification_id))
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="enqueue-stamps", daemon=True)
                self._thread.start()

    def flush(self, *, held_only: bool = False) -> int:
        """Stamp the rows added since the last flush (with ``held_only``, those added ``hold`` ago or earlier)
        that are still pending and unstamped, unless the broker may have lost their messages since; returns how
        many were stamped."""
        before = self._read_epoch()
        with self._lock:
            if held_only:
                cutoff = time.monotonic() - self._hold
                split = next((i for i, (at, _, _) in enumerate(self._pending) if at > cutoff), len(self._pending))
            else:
                split = len(self._pending)
            taken, self._pending = self._pending[:split], self._pending[split:]
        if not taken:
            self._epoch_seen = before
            return 0
        # The same reading (a missing marker included: the relay that re-creates it forgets every stamp first).
        ids = [nid for _, seen, nid in taken if before is not UNREADABLE and seen == before]
        if len(ids) < len(taken):
            log.warning("outbox.stamps_skipped", rows=len(taken) - len(ids), reason="broker epoch changed")
        at = self._clock.now()
        stamped = self._write(partial(self._stamp, ids, at), len(ids)) if ids else 0
        after = self._read_epoch()
        self._epoch_seen = after
        if stamped and after != before:  # lost while we stamped: take the stamps back, the relay queues them
            self._write(partial(self._unstamp, ids, at), len(ids))
            log.warning("outbox.stamps_withdrawn", rows=stamped, reason="broker epoch changed")
            return 0
        return stamped

    def _read_epoch(self) -> object:
        if self._epoch is None:
            return None
        try:
            return self._epoch()
        except Exception as exc:  # the broker is away: nothing can be vouched for now
            log.warning("outbox.broker_epoch_unread", error=type(exc).__name__)
            return UNREADABLE

    def _write(self, write: Callable[[], int], rows: int) -> int:
        try:
            return retry_transient(write, seconds=2.0)
        except Exception as exc:  # the relay's grace covers what stays unstamped
            log.warning("outbox.stamp_failed", rows=rows, error=type(exc).__name__)
            return 0

    def _stamp(self, ids: list[int], at: datetime) -> int:
        """Stamp those of ``ids`` still pending and unstamped; how many were."""
        if self._engine.dialect.name == "postgresql":
            return len(run_raw(self._engine, _STAMP_PG, {"ids": ids, "now": at}))
        return self._update(ids, col(Notification.enqueued_at).is_(None), at)

    def _unstamp(self, ids: list[int], at: datetime) -> int:
        """Take back the stamps written at ``at`` on those of ``ids`` still pending; how many were."""
        if self._engine.dialect.name == "postgresql":
            return len(run_raw(self._engine, _UNSTAMP_PG, {"ids": ids, "at": at}))
        return self._update(ids, col(Notification.enqueued_at) == at, None)

    def _update(self, ids: list[int], stamp_is: ColumnElement[bool], value: datetime | None) -> int:
        with session_scope(self._engine) as session:
            result = session.execute(
                update(Notification)
                .where(col(Notification.id).in_(ids), col(Notification.state) == State.PENDING, stamp_is)
                .values(enqueued_at=value)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def _run(self) -> None:
        while not self._wake.wait(self._every):
            self.flush(held_only=True)

    def close(self) -> None:
        """Flush what is left and stop the thread (the process is exiting)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
