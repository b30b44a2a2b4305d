"""The dispatcher: change logs -> events -> one delivery row per subscribed endpoint, past a watermark.

Why not write webhook rows where the changes happen? Every change that is an event already appends a row, in its
own transaction, to a log that is never updated: ``notification_event`` (sent, delivered, failed, suppressed,
expired), ``consent_event`` (STOP, unsubscribe link, provider opt-out, preference change), ``delivery_attempt``
(a provider saying a push token is dead prunes the device in that transaction) and ``appointment_reply``. Reading
those logs past a watermark gives the outbox's guarantee (an event exists if and only if its change committed)
without one more statement on the delivery hot path, and costs nothing per change when no endpoint is registered.

The scheduler's ``webhooks_dispatch`` job runs :meth:`Dispatcher.tick`:

1. No enabled endpoint: the marks jump to the logs' ends (one statement reading four index ends); nothing is read.
2. Else a barrier, as the /metrics rollup takes (:mod:`worker.metrics.rollup`): the logs' highest ids, then the
   transactions holding a write lock on any of them. PostgreSQL draws ids at insert time and commits in any order,
   so an id below a committed one may still be in flight; once those writers have ended, every id up to the
   barrier is final. The tick waits up to ``webhooks.barrier_wait_seconds``, or keeps the barrier for the next tick.
3. In batches, one transaction each, under the cursor row's lock (two schedulers never dispatch a row twice): read
   the events between the marks, store each once (``webhook_event``; its key is derived from the log row), add a
   ``webhook_delivery`` for every enabled endpoint subscribed to its type, move the marks.
4. Queue a ``send_webhooks`` message for each endpoint with work due and no sender out (``kicked_until``).

Events are stored in the order they happened within a batch (time, then log), so delivery ids follow that order;
an endpoint that asks for per-patient order gets one patient's events one after another (:mod:`.sender`).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from worker.clock import Clock
from worker.models_outbound import WebhookCursor, WebhookDelivery, WebhookEndpoint, WebhookEvent
from worker.outbound.events import SOURCES, Event, Source, read_events
from worker.settings import WebhookSettings

log = structlog.get_logger(__name__)

CURSOR_ID = 1
Marks = dict[str, int]  # source name -> highest id dispatched
Kick = Callable[[int], None]

_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_DELIVERIES = WebhookDelivery.__table__  # type: ignore[attr-defined]
_EVENTS = WebhookEvent.__table__  # type: ignore[attr-defined]
_CURSOR = WebhookCursor.__table__  # type: ignore[attr-defined]


def _insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


# -- marks and barriers ------------------------------------------------------------------------------------------


def log_ends(conn: Connection) -> Marks:
    """Every source log's highest id, in one statement."""
    row = conn.execute(
        select(*(select(func.coalesce(func.max(s.table.c.id), 0)).scalar_subquery().label(s.name) for s in SOURCES))
    ).one()
    return {s.name: int(getattr(row, s.name)) for s in SOURCES}


_WRITERS = (
    "SELECT DISTINCT virtualtransaction FROM pg_locks "
    "WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND relation IN ({tables}) AND pid IS DISTINCT FROM pg_backend_pid()"
)


def log_writers(conn: Connection) -> frozenset[str]:
    """PostgreSQL: the transactions writing any source log now (always empty on SQLite: one writer at a time)."""
    if conn.dialect.name != "postgresql":
        return frozenset()
    tables = ", ".join(f"'{s.table.name}'::regclass" for s in SOURCES)
    return frozenset(str(v) for v in conn.execute(text(_WRITERS.format(tables=tables))).scalars())


@dataclass(frozen=True)
class Barrier:
    marks: Marks
    writers: frozenset[str]


def take_barrier(engine: Engine) -> Barrier:
    """The logs' ends, then their writers: anyone holding an id up to the ends already held its lock."""
    with engine.connect() as conn:
        marks = log_ends(conn)
        conn.commit()
        return Barrier(marks, log_writers(conn))


def writers_done(engine: Engine, barrier: Barrier, *, seconds: float) -> bool:
    waiting, deadline, pause = barrier.writers, time.monotonic() + seconds, 0.002
    while waiting:
        with engine.connect() as conn:
            waiting = waiting & log_writers(conn)
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)  # waiting on other transactions, not a backoff: no clock to travel here
        pause = min(pause * 2, 0.05)
    return True


def _lock_cursor(conn: Connection) -> Marks | None:
    """The cursor, locked for this transaction (created at 0 if missing); ``None``: another dispatcher holds it."""
    query = select(_CURSOR).where(_CURSOR.c.id == CURSOR_ID)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    row = conn.execute(query).first()
    if row is None:
        zero = {f"{s.name}_mark": 0 for s in SOURCES}
        conn.execute(_insert(conn)(_CURSOR).values(id=CURSOR_ID, **zero).on_conflict_do_nothing(index_elements=["id"]))
        row = conn.execute(query).first()
    if row is None:
        return None
    return {s.name: int(getattr(row, f"{s.name}_mark")) for s in SOURCES}


def _save(conn: Connection, marks: Marks, now: datetime) -> None:
    conn.execute(
        update(_CURSOR)
        .where(_CURSOR.c.id == CURSOR_ID)
        .values(dispatched_at=now, **{f"{name}_mark": mark for name, mark in marks.items()})
    )


def current_marks(engine: Engine) -> Marks:
    with engine.connect() as conn:
        row = conn.execute(select(_CURSOR).where(_CURSOR.c.id == CURSOR_ID)).first()
    return {s.name: 0 if row is None else int(getattr(row, f"{s.name}_mark")) for s in SOURCES}


# -- storing events and deliveries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An endpoint events may be fanned out to."""

    id: int
    events: frozenset[str]


def enabled_targets(conn: Connection, only: int | None = None) -> list[Target]:
    query = select(_ENDPOINTS.c.id, _ENDPOINTS.c.events).where(_ENDPOINTS.c.enabled.is_(True))
    if only is not None:
        query = query.where(_ENDPOINTS.c.id == only)
    return [Target(int(i), frozenset(events or ())) for i, events in conn.execute(query.order_by(_ENDPOINTS.c.id))]


def store(conn: Connection, events: Sequence[Event], targets: Sequence[Target], now: datetime, *, again: bool) -> int:
    """Store ``events`` (once each) and a delivery per subscribed target; returns the deliveries written.

    ``again`` (a replay): a delivery that exists is made pending again, with a fresh retry window.
    """
    wanted = [e for e in sorted(events, key=lambda e: e.order) if any(e.type in t.events for t in targets)]
    if not wanted:
        return 0
    insert = _insert(conn)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        conn.execute(
            insert(_EVENTS)
            .values(
                [
                    {
                        "event_key": e.key,
                        "type": e.type.value,
                        "patient_id": e.patient_id,
                        "occurred_at": e.occurred_at,
                        "payload": e.payload,
                    }
                    for e in chunk
                ]
            )
            .on_conflict_do_nothing(index_elements=["event_key"])
        )
    ids: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        keys = [e.key for e in wanted[start : start + 500]]
        ids.update(
            (str(k), int(i))
            for k, i in conn.execute(select(_EVENTS.c.event_key, _EVENTS.c.id).where(_EVENTS.c.event_key.in_(keys)))
        )
    rows = [
        {
            "endpoint_id": t.id,
            "event_id": ids[e.key],
            "patient_id": e.patient_id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for e in wanted
        for t in targets
        if e.type in t.events
    ]
    if again:
        # A replay: this endpoint's earlier deliveries of these events go, and new ones are inserted in the order
        # the events happened, so an ordered endpoint gets them in that order (delivery ids are the queue order).
        event_ids = sorted({ids[e.key] for e in wanted})
        for start in range(0, len(event_ids), 500):
            conn.execute(
                delete(_DELIVERIES).where(
                    _DELIVERIES.c.endpoint_id.in_([t.id for t in targets]),
                    _DELIVERIES.c.event_id.in_(event_ids[start : start + 500]),
                )
            )
    for start in range(0, len(rows), 500):
        conn.execute(
            insert(_DELIVERIES)
            .values(rows[start : start + 500])
            .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        )
    return len(rows)


def due_condition(now: datetime) -> Any:
    """A delivery a sender may take now: pending and due, or held under a lease that ran out (its sender died)."""
    d = _DELIVERIES
    return or_(
        and_(d.c.state == "pending", d.c.next_attempt_at <= now),
        and_(d.c.state == "sending", d.c.lease_until < now),
    )


def kick_due(conn: Connection, now: datetime, hold: timedelta) -> list[int]:
    """Endpoints with work due and no sender out: marked as having one until ``now + hold``; returns their ids."""
    e, d = _ENDPOINTS, _DELIVERIES
    has_work = exists().where(d.c.endpoint_id == e.c.id, due_condition(now))
    free = or_(e.c.kicked_until.is_(None), e.c.kicked_until < now)
    ids = [int(i) for i in conn.execute(select(e.c.id).where(e.c.enabled.is_(True), free, has_work)).scalars()]
    if ids:
        conn.execute(update(e).where(e.c.id.in_(ids)).values(kicked_until=now + hold))
    return ids


# -- the job -------------------------------------------------------------------------------------------------------


class Dispatcher:
    """The scheduler's ``webhooks_dispatch`` job (see the module docstring)."""

    def __init__(self, engine: Engine, clock: Clock, settings: WebhookSettings, kick: Kick) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.kick = kick
        self._pending: Barrier | None = None

    def tick(self) -> int:
        """Dispatch what committed since the last tick and queue senders; returns the deliveries created."""
        with self.engine.begin() as conn:
            if not enabled_targets(conn):
                self._skip_to_end(conn)
                return 0
        barrier = self._pending or take_barrier(self.engine)
        if not writers_done(self.engine, barrier, seconds=self.settings.barrier_wait_seconds):
            self._pending = barrier  # kept, not replaced: a newer one could wait on newer writers for ever
            log.info("webhooks.dispatch_waiting", writers=len(barrier.writers))
            created = 0
        else:
            self._pending = None
            created = self.catch_up(barrier.marks)
        self.kick_senders()
        return created

    def _skip_to_end(self, conn: Connection) -> None:
        """No one to tell: nothing is read, the marks move to the logs' ends (a new endpoint hears of what
        happens after it was added; ``webhooks replay --since`` sends it older events)."""
        self._pending = None
        marks = _lock_cursor(conn)
        if marks is None:
            return
        ends = log_ends(conn)
        if any(ends[name] > marks[name] for name in ends):
            _save(conn, {name: max(marks[name], ends[name]) for name in ends}, self.clock.now())

    def catch_up(self, target: Marks) -> int:
        """Move the marks to ``target`` (all final) in batches of ``webhooks.batch_size`` ids per log."""
        created = moved = 0
        while moved < self.settings.max_per_tick:
            with self.engine.begin() as conn:
                old = _lock_cursor(conn)
                if old is None:
                    return created  # another scheduler is dispatching
                if all(old[n] >= target[n] for n in target):
                    return created
                new = {n: max(old[n], min(target[n], old[n] + self.settings.batch_size)) for n in target}
                events: list[Event] = []
                for source in SOURCES:
                    if new[source.name] > old[source.name]:
                        events.extend(read_events(conn, source, old[source.name], new[source.name]))
                now = self.clock.now()
                created += store(conn, events, enabled_targets(conn), now, again=False)
                _save(conn, new, now)
            moved += sum(new[n] - old[n] for n in new)
        return created

    def kick_senders(self) -> list[int]:
        """Queue sender messages for endpoints with work due (``senders_per_endpoint`` each)."""
        hold = timedelta(seconds=self.settings.lease_seconds)
        with self.engine.begin() as conn:
            ids = kick_due(conn, self.clock.now(), hold)
        for endpoint_id in ids:
            for _ in range(self.settings.senders_per_endpoint):
                self.kick(endpoint_id)
        return ids


def _replayed(engine: Engine, source: Source, since: datetime, upto: int, batch_size: int) -> Iterator[Event]:
    """One log's events at or after ``since`` with ids up to ``upto``, read a chunk of ids per transaction."""
    with engine.connect() as conn:
        first = conn.scalar(select(func.min(source.table.c.id)).where(source.time_column >= since))
    if first is None:
        return
    start = int(first) - 1
    while start < upto:
        end = min(upto, start + batch_size)
        with engine.connect() as conn:
            events = read_events(conn, source, start, end, since)
        yield from events  # outside the transaction: SQLite's is a write lock (BEGIN IMMEDIATE)
        start = end


def replay(
    engine: Engine,
    clock: Clock,
    *,
    since: datetime,
    endpoint_id: int | None = None,
    batch_size: int = 5000,
    sources: Iterable[Source] = SOURCES,
) -> int:
    """Send again every event since ``since`` (to one endpoint, or every enabled one), with its original
    ``webhook-id``: also those that happened while an endpoint was disabled, or before it was added. Reads the logs
    up to the dispatcher's marks (later rows are dispatched by it anyway), merged in the order the events happened
    (memory stays bounded: each log is read a chunk at a time); returns the deliveries queued."""
    marks = current_marks(engine)
    with engine.connect() as conn:
        if not enabled_targets(conn, endpoint_id):
            return 0
    streams = [_replayed(engine, source, since, marks[source.name], batch_size) for source in sources]
    queued = 0
    chunk: list[Event] = []
    for event in heapq.merge(*streams, key=lambda e: e.order):
        chunk.append(event)
        if len(chunk) >= 500:
            queued += _store_replayed(engine, clock, chunk, endpoint_id)
            chunk = []
    if chunk:
        queued += _store_replayed(engine, clock, chunk, endpoint_id)
    return queued


def _store_replayed(engine: Engine, clock: Clock, events: list[Event], endpoint_id: int | None) -> int:
    with engine.begin() as conn:
        return store(conn, events, enabled_targets(conn, endpoint_id), clock.now(), again=True)
