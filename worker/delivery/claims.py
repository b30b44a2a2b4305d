"""Claims: a worker takes a row (PENDING/DEFERRED/RETRYING -> SENDING) and holds it for as long as it lives.

A claim names its holder (``claimed_by``) and carries a short lease that the holder's heartbeat
(:class:`Leases`) keeps extending while the send runs, however slow the provider. A killed worker stops
beating, so its rows are found by the relay within seconds; a live worker's slow send is never taken from it.
Claiming locks the row (``FOR UPDATE``, waiting for a writer rather than skipping it), so a broker message
never loses its row to a transaction that merely touched it.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import Select, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from worker.clock import Clock
from worker.db import session_scope
from worker.models import Notification, NotificationEvent
from worker.outbox import id_of
from worker.states import CLAIMABLE, State

log = structlog.get_logger(__name__)

NOT_CLAIMABLE = "not claimable: already settled, or held by a live worker"


def new_holder_id() -> str:
    """``host:pid:nonce``: who holds a claim, readable by an operator and unique per process start."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class NotDue:
    """The row is open but not due until ``at``: the message must come back then, not be dropped."""

    at: datetime


def _claimable(row: Notification, now: datetime) -> tuple[bool, bool]:
    """(may be claimed now, because its holder's lease ran out)."""
    observed = State(row.state)
    due = row.not_before is None or row.not_before <= now
    stale_lease = observed is State.SENDING and row.lease_until is not None and row.lease_until < now
    return (observed in CLAIMABLE and due) or stale_lease, stale_lease


def _take(session: Session, row: Notification, now: datetime, lease: timedelta, holder: str, stale: bool) -> None:
    session.add(
        NotificationEvent(
            notification_id=id_of(row),
            from_state=row.state,
            to_state=State.SENDING,
            reason="lease expired; claimed again" if stale else "claimed",
            at=now,
        )
    )
    row.state = State.SENDING
    row.lease_until = now + lease
    row.claimed_by = holder
    row.attempt_count += 1
    row.updated_at = now


def _locked(engine: Engine, ids: Sequence[int]) -> Select[Notification]:
    query = select(Notification).where(col(Notification.id).in_(list(ids))).order_by(col(Notification.id))
    if engine.dialect.name == "postgresql":
        # Wait for a writer (a relay stamping it, a cancel) instead of skipping: a skipped row would be lost
        # to this message. Ordered by id, so two batches never deadlock. SQLite's lock is taken at BEGIN.
        query = query.with_for_update()
    return query


def claim(
    engine: Engine, clock: Clock, notification_id: int, *, lease: timedelta, holder: str
) -> Notification | NotDue | None:
    """Claim one row. ``NotDue`` if it is open but not yet due; ``None`` if settled, gone, or held by a live
    worker (that worker settles it, or the relay recovers it when its heartbeat stops)."""
    now = clock.now()
    with session_scope(engine) as session:
        row = session.scalars(_locked(engine, [notification_id])).first()
        if row is None:
            return None
        claimable, stale = _claimable(row, now)
        if not claimable:
            if State(row.state) in CLAIMABLE and row.not_before is not None:
                return NotDue(row.not_before)
            return None
        _take(session, row, now, lease, holder, stale)
        session.flush()
        session.expunge(row)
        return row


def claim_many(
    engine: Engine, clock: Clock, notification_ids: Sequence[int], *, lease: timedelta, holder: str
) -> tuple[list[Notification], dict[int, NotDue]]:
    """Claim every claimable row of a batch in one transaction; also say which open rows are not due yet."""
    now = clock.now()
    claimed: list[Notification] = []
    later: dict[int, NotDue] = {}
    with session_scope(engine) as session:
        for row in session.scalars(_locked(engine, notification_ids)):
            claimable, stale = _claimable(row, now)
            if claimable:
                _take(session, row, now, lease, holder, stale)
                claimed.append(row)
            elif State(row.state) in CLAIMABLE and row.not_before is not None:
                later[id_of(row)] = NotDue(row.not_before)
        session.flush()
        for row in claimed:
            session.expunge(row)
    return claimed, later


class Leases:
    """This process's claims: its holder id, the rows it is sending now, and the heartbeat that keeps their
    leases alive.

    Only rows registered with :meth:`hold` are extended, so a row this process failed to hand back (the
    database was down when it tried) is not kept alive by a process that forgot it: its lease runs out and the
    relay recovers it.
    """

    def __init__(
        self, engine: Engine, clock: Clock, *, lease: timedelta, beat: timedelta, holder: str | None = None
    ) -> None:
        if beat * 2 > lease:
            raise ValueError("the heartbeat must run at least twice per lease")
        self.engine = engine
        self.clock = clock
        self.lease = lease
        self.beat_every = beat
        self.holder = holder or new_holder_id()
        self._held: dict[int, int] = {}
        self._parked: list[tuple[int, Callable[[], None]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, ids: Iterable[int]) -> None:
        with self._lock:
            for notification_id in ids:
                self._held[notification_id] = self._held.get(notification_id, 0) + 1

    def release(self, ids: Iterable[int]) -> None:
        with self._lock:
            for notification_id in ids:
                left = self._held.get(notification_id, 0) - 1
                if left > 0:
                    self._held[notification_id] = left
                else:
                    self._held.pop(notification_id, None)

    def park(self, notification_id: int, write: Callable[[], None]) -> None:
        """Keep holding a row whose provider answer could not be written down (the database went away after
        the provider accepted): each beat tries ``write`` again, and only once it is written is the row let go,
        so the send is recorded when the database is back and never repeated."""
        self.hold([notification_id])
        with self._lock:
            self._parked.append((notification_id, write))

    def parked(self) -> int:
        with self._lock:
            return len(self._parked)

    def flush_parked(self) -> int:
        """Try every parked write once; returns how many are still waiting."""
        with self._lock:
            waiting, self._parked = self._parked, []
        still: list[tuple[int, Callable[[], None]]] = []
        for notification_id, write in waiting:
            try:
                write()
            except Exception as exc:
                log.warning("leases.parked_write_failed", notification_id=notification_id, error=type(exc).__name__)
                still.append((notification_id, write))
            else:
                log.info("leases.parked_write_done", notification_id=notification_id)
                self.release([notification_id])
        with self._lock:
            self._parked.extend(still)
            return len(self._parked)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def beat(self) -> int:
        """Extend the lease of every row held here; returns how many rows were extended."""
        ids = self.held()
        if not ids:
            return 0
        with session_scope(self.engine) as session:
            result = session.execute(
                update(Notification)
                .where(
                    col(Notification.id).in_(ids),
                    col(Notification.claimed_by) == self.holder,
                    col(Notification.state) == State.SENDING,
                )
                .values(lease_until=self.clock.now() + self.lease)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def start(self) -> None:
        """Beat in a daemon thread until :meth:`stop`. A failed beat is logged and tried again next time."""
        if self._thread is not None:
            return
        self._stop.clear()

        def _run() -> None:
            while not self._stop.wait(self.beat_every.total_seconds()):
                try:
                    self.beat()
                    if self._parked:
                        self.flush_parked()
                except Exception as exc:  # the database may be briefly away; the next beat tries again
                    log.warning("leases.beat_failed", error=type(exc).__name__)

        self._thread = threading.Thread(target=_run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
