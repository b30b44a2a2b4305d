"""The rollup behind ``/metrics``: settled notifications and provider calls, folded in from the append-only logs.

``notification_event`` (every state change) and ``delivery_attempt`` (every provider call) only ever grow, with
increasing ids. The scheduler's ``metrics_rollup`` job reads each past its watermark (``metrics_cursor``) and
adds what it finds to two small count tables; a scrape reads those and counts the few open rows live (the
partial index ``ix_notification_due``). Nothing is added to the delivery path: no counter row is touched per
notification, so workers never contend on one.

What the rollup counts is a pure function of the log rows at or below the marks. For one notification,
``f(marks)`` is its state after its last event at or below the event mark (if that state is terminal), its
category, and the provider of its last attempt at or below the attempt mark (``none`` without one). The count
table holds the sum of ``f`` over every notification. Moving the marks from ``old`` to ``new`` changes ``f`` only
for notifications with a log row between them, so a step adds ``f(new) - f(old)`` over just those: a row counted
as ``sent`` that is later ``delivered`` moves from one count to the other, and a failed row replayed (``failed ->
pending``) leaves the settled counts until it settles again, with its new provider.

A mark only passes ids whose transactions are over. PostgreSQL hands out ids at insert time but commits in any
order, so an id below a committed one may still be in flight. A tick therefore takes a *barrier*: the logs' highest
ids, then the (virtual) transactions holding a write lock on either log (any writer of an id up to there holds
that lock until it ends). Once those have ended, every id up to the barrier is committed or never will be, and the
tick folds in up to it; until then it waits (``metrics.barrier_wait_seconds``) or leaves it for the next tick.
SQLite has one writer at a time, so its highest committed id is always a barrier; its logs use AUTOINCREMENT
(migration 0025) so that an id, once counted, is never handed out again after an erasure deleted it.

Erasure deletes a patient's notifications with their logs (and retention old terminal ones: see
:func:`forget_notifications`). It takes the cursor's lock and subtracts exactly what the rollup had counted for
them (``f`` at the current marks, and their counted attempts), so the metrics keep
equalling a count of what the database holds, as they did when every scrape counted the table.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, Row
from sqlmodel import SQLModel, col

from worker.clock import Clock
from worker.models import DeliveryAttempt, Notification, NotificationEvent
from worker.models_metrics import MetricsCursor, NotificationCount, ProviderCallCount
from worker.settings import MetricsSettings
from worker.states import TERMINAL, State

log = structlog.get_logger(__name__)

#: The provider label of a notification that never had a delivery attempt.
NO_PROVIDER = "none"
#: Counted live at scrape time (exactly the states ``ix_notification_due`` covers); the rest come from the rollup.
OPEN: tuple[State, ...] = (State.PENDING, State.DEFERRED, State.RETRYING, State.SENDING)
SETTLED: tuple[str, ...] = tuple(sorted(state.value for state in TERMINAL))

CURSOR_ID = 1

StateKey = tuple[str, str, str]  # state, category, provider
CallKey = tuple[str, str, str, str]  # category, channel, provider, outcome


@dataclass(frozen=True, order=True)
class Marks:
    """Log ids up to which everything is counted: ``notification_event`` and ``delivery_attempt``."""

    event: int
    attempt: int

    def covers(self, other: Marks) -> bool:
        return self.event >= other.event and self.attempt >= other.attempt


@dataclass(frozen=True)
class Barrier:
    """The logs' highest ids, and the transactions that could still commit an id at or below them."""

    marks: Marks
    writers: frozenset[str]


# -- what the rollup counts ------------------------------------------------------------------------------------


def _last(model: type[NotificationEvent] | type[DeliveryAttempt], column: Any, mark: int) -> Any:
    """``column`` of the notification's last ``model`` row at or below ``mark``: one short range of the log's
    ``notification_id`` index per notification (PostgreSQL and SQLite alike), whatever the log's size."""
    return (
        select(column)
        .where(col(model.notification_id) == col(Notification.id), col(model.id) <= mark)
        .order_by(col(model.id).desc())
        .limit(1)
        .correlate(Notification)
        .scalar_subquery()
    )


def _state(mark: Marks) -> tuple[Any, Any]:
    """``f``'s state and provider at ``mark`` (the category is the notification's own)."""
    return (
        _last(NotificationEvent, col(NotificationEvent.to_state), mark.event),
        _last(DeliveryAttempt, col(DeliveryAttempt.provider), mark.attempt),
    )


def _counted(state: str | None, category: str, provider: str | None) -> StateKey | None:
    """The count ``f`` adds to, or ``None`` for an open notification (counted live) or one with no event yet."""
    if state is None or state not in SETTLED:
        return None
    return (str(state), str(category), provider or NO_PROVIDER)


def settled_counts(conn: Connection, marks: Marks, where: Any = None) -> Counter[StateKey]:
    """Sum of ``f(marks)`` (see the module docstring) over every notification, or those ``where`` selects."""
    state, provider = _state(marks)
    rows = select(col(Notification.category).label("category"), state.label("state"), provider.label("provider"))
    if where is not None:
        rows = rows.where(where)
    each = rows.subquery()
    # Grouped without a WHERE on the state: a filter on the subquery's output would evaluate its lookups twice.
    counts: Counter[StateKey] = Counter()
    for category, last_state, last_provider, count in conn.execute(
        select(each.c.category, each.c.state, each.c.provider, func.count()).group_by(
            each.c.category, each.c.state, each.c.provider
        )
    ):
        key = _counted(last_state, category, last_provider)
        if key is not None:
            counts[key] += int(count)
    return counts


def settled_changes(conn: Connection, old: Marks, new: Marks, ids: Sequence[int]) -> Counter[StateKey]:
    """``f(new) - f(old)`` summed over the notifications ``ids``, in one pass over them."""
    old_state, old_provider = _state(old)
    new_state, new_provider = _state(new)
    each = (
        select(
            col(Notification.category).label("category"),
            old_state.label("old_state"),
            old_provider.label("old_provider"),
            new_state.label("new_state"),
            new_provider.label("new_provider"),
        )
        .where(col(Notification.id).in_(list(ids)))
        .subquery()
    )
    columns = (each.c.category, each.c.old_state, each.c.old_provider, each.c.new_state, each.c.new_provider)
    delta: Counter[StateKey] = Counter()
    for category, was, was_by, now, now_by, count in conn.execute(select(*columns, func.count()).group_by(*columns)):
        before, after = _counted(was, category, was_by), _counted(now, category, now_by)
        if before != after:
            if before is not None:
                delta[before] -= int(count)
            if after is not None:
                delta[after] += int(count)
    return delta


def call_counts(
    conn: Connection,
    after: int,
    upto: int,
    *,
    patient_id: int | None = None,
    notification_ids: Sequence[int] | None = None,
) -> Counter[CallKey]:
    """Delivery attempts with ``after < id <= upto`` (of one patient's notifications, or of ``notification_ids``,
    if given), grouped."""
    query = (
        select(
            col(Notification.category),
            col(DeliveryAttempt.channel),
            col(DeliveryAttempt.provider),
            col(DeliveryAttempt.outcome),
            func.count(),
        )
        .join(Notification, col(Notification.id) == col(DeliveryAttempt.notification_id))
        .where(col(DeliveryAttempt.id) > after, col(DeliveryAttempt.id) <= upto)
    )
    if patient_id is not None:
        query = query.where(col(Notification.patient_id) == patient_id)
    if notification_ids is not None:
        query = query.where(col(DeliveryAttempt.notification_id).in_(list(notification_ids)))
    rows = conn.execute(
        query.group_by(
            col(Notification.category),
            col(DeliveryAttempt.channel),
            col(DeliveryAttempt.provider),
            col(DeliveryAttempt.outcome),
        )
    ).all()
    return Counter({(str(c), str(ch), str(p), str(o)): int(n) for c, ch, p, o, n in rows})


def _touched(conn: Connection, old: Marks, new: Marks) -> list[int]:
    """Notifications with a log row past ``old`` and up to ``new``: the only ones whose ``f`` can differ."""
    return sorted(
        conn.execute(
            select(col(NotificationEvent.notification_id))
            .where(col(NotificationEvent.id) > old.event, col(NotificationEvent.id) <= new.event)
            .union(
                select(col(DeliveryAttempt.notification_id)).where(
                    col(DeliveryAttempt.id) > old.attempt, col(DeliveryAttempt.id) <= new.attempt
                )
            )
        ).scalars()
    )


def _add(conn: Connection, model: type[SQLModel], delta: Mapping[Any, int]) -> None:
    """Add ``delta`` to a count table (the caller holds the cursor's lock: nobody else writes it meanwhile)."""
    table = model.__table__  # type: ignore[attr-defined]
    keys = [column.name for column in table.primary_key.columns]
    for key, change in sorted(delta.items()):
        if not change:
            continue
        match = and_(*(table.c[name] == value for name, value in zip(keys, key, strict=True)))
        result = conn.execute(update(table).where(match).values(count=table.c.count + change))
        if result.rowcount == 0:
            conn.execute(insert(table).values({**dict(zip(keys, key, strict=True)), "count": change}))


def _negated(counts: Mapping[Any, int]) -> dict[Any, int]:
    return {key: -value for key, value in counts.items()}


def short_plans(conn: Connection) -> None:
    """PostgreSQL: no JIT for this transaction. The per-row index lookups make the planner's cost estimates
    large enough to JIT-compile queries that run in milliseconds, and compiling costs more than they do."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL jit = off"))


# -- the cursor and its lock -----------------------------------------------------------------------------------


def _lock_cursor(conn: Connection, *, skip_locked: bool) -> Row[int, int] | None:
    """The cursor row, locked for this transaction (created at 0 if missing). ``None``: another holds it."""
    query = select(col(MetricsCursor.event_mark), col(MetricsCursor.attempt_mark)).where(
        col(MetricsCursor.id) == CURSOR_ID
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    row = conn.execute(query).first()
    if row is None:
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(MetricsCursor)
            .values(id=CURSOR_ID, event_mark=0, attempt_mark=0)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = conn.execute(query).first()
    return row


def _marks(row: Row[int, int]) -> Marks:
    return Marks(int(row.event_mark), int(row.attempt_mark))


def _save(conn: Connection, marks: Marks, clock: Clock) -> None:
    conn.execute(
        update(MetricsCursor)
        .where(col(MetricsCursor.id) == CURSOR_ID)
        .values(event_mark=marks.event, attempt_mark=marks.attempt, rolled_up_at=clock.now())
    )


def current_marks(engine: Engine) -> Marks:
    """How far the rollup has counted (``Marks(0, 0)`` before its first tick)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(col(MetricsCursor.event_mark), col(MetricsCursor.attempt_mark)).where(
                col(MetricsCursor.id) == CURSOR_ID
            )
        ).first()
    return Marks(0, 0) if row is None else _marks(row)


# -- barriers ----------------------------------------------------------------------------------------------------

_LOG_WRITERS = text(
    "SELECT DISTINCT virtualtransaction FROM pg_locks "
    "WHERE locktype = 'relation' AND mode = 'RowExclusiveLock' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND relation IN ('notification_event'::regclass, 'delivery_attempt'::regclass) "
    "AND pid IS DISTINCT FROM pg_backend_pid()"
)


def log_ends(conn: Connection) -> Marks:
    """The highest committed id of each log."""
    return Marks(
        int(conn.scalar(select(func.coalesce(func.max(col(NotificationEvent.id)), 0))) or 0),
        int(conn.scalar(select(func.coalesce(func.max(col(DeliveryAttempt.id)), 0))) or 0),
    )


def log_writers(conn: Connection) -> frozenset[str]:
    """PostgreSQL: the transactions holding a write lock on either log now (always empty on SQLite)."""
    if conn.dialect.name != "postgresql":
        return frozenset()
    return frozenset(str(v) for v in conn.execute(_LOG_WRITERS).scalars())


def take_barrier(engine: Engine) -> Barrier:
    """The logs' ends, then who is writing them. In that order: whoever holds an id up to the ends already held
    its table lock (taken before the insert draws its id, kept until the transaction ends) when we look."""
    with engine.connect() as conn:
        marks = log_ends(conn)
        conn.commit()
        return Barrier(marks, log_writers(conn))


def wait_for_writers(engine: Engine, barrier: Barrier, *, seconds: float) -> bool:
    """Whether every transaction in ``barrier.writers`` has ended (waiting up to ``seconds``)."""
    waiting = barrier.writers
    deadline = time.monotonic() + seconds
    pause = 0.002
    while waiting:
        with engine.connect() as conn:
            waiting = waiting & log_writers(conn)
        if not waiting:
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.1)
    return True


# -- the job -----------------------------------------------------------------------------------------------------


class MetricsRollup:
    """The scheduler's ``metrics_rollup`` job, with the barrier it is waiting on between ticks."""

    def __init__(self, engine: Engine, clock: Clock, settings: MetricsSettings) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self._pending: Barrier | None = None

    def tick(self) -> int:
        """Fold in what committed since the last tick; returns how many log ids the marks moved by."""
        barrier = self._pending or take_barrier(self.engine)
        if not wait_for_writers(self.engine, barrier, seconds=self.settings.barrier_wait_seconds):
            # Kept, not replaced: a newer barrier could wait on newer writers forever on a busy database.
            self._pending = barrier
            log.info("metrics.rollup_waiting", writers=len(barrier.writers))
            return 0
        self._pending = None
        return self.catch_up(barrier.marks)

    def catch_up(self, target: Marks) -> int:
        """Move the marks to ``target`` (ids all settled) in batches; another scheduler's tick is left alone."""
        moved = 0
        while moved < self.settings.max_per_tick:
            with self.engine.begin() as conn:
                short_plans(conn)
                row = _lock_cursor(conn, skip_locked=True)
                if row is None:
                    return moved  # another scheduler is rolling up, or an erasure is subtracting
                old = _marks(row)
                if old.covers(target):
                    return moved
                if old == Marks(0, 0):
                    # The first tick (e.g. just after the upgrade): count the existing logs set-based, much faster
                    # than walking years of them batch by batch.
                    new = Marks(max(old.event, target.event), max(old.attempt, target.attempt))
                    _recount(conn, new)
                else:
                    batch = self.settings.batch_size
                    new = Marks(
                        max(old.event, min(target.event, old.event + batch)),
                        max(old.attempt, min(target.attempt, old.attempt + batch)),
                    )
                    _step(conn, old, new)
                _save(conn, new, self.clock)
            moved += (new.event - old.event) + (new.attempt - old.attempt)
            if new.covers(target):
                break
        if moved:
            log.debug("metrics.rolled_up", ids=moved)
        return moved

    def rebuild(self) -> Marks:
        """Count everything again from the logs (an operator's repair; the first tick does this by itself)."""
        barrier = take_barrier(self.engine)
        while not wait_for_writers(self.engine, barrier, seconds=60):
            log.info("metrics.rebuild_waiting", writers=len(barrier.writers))
        with self.engine.begin() as conn:
            short_plans(conn)
            row = _lock_cursor(conn, skip_locked=False)
            assert row is not None
            new = Marks(max(row.event_mark, barrier.marks.event), max(row.attempt_mark, barrier.marks.attempt))
            _recount(conn, new)
            _save(conn, new, self.clock)
        log.info("metrics.rebuilt", event_mark=new.event, attempt_mark=new.attempt)
        return new


#: Notifications looked up per statement: an explicit id list keeps PostgreSQL on index lookups (its estimate of a
#: semi-join against the logs is poor), and stays far below SQLite's limit on bound parameters.
CHUNK = 1000


def _step(conn: Connection, old: Marks, new: Marks) -> None:
    touched = _touched(conn, old, new)
    delta: Counter[StateKey] = Counter()
    for start in range(0, len(touched), CHUNK):
        delta.update(settled_changes(conn, old, new, touched[start : start + CHUNK]))
    _add(conn, NotificationCount, delta)
    _add(conn, ProviderCallCount, call_counts(conn, old.attempt, new.attempt))


def _recount(conn: Connection, marks: Marks) -> None:
    conn.execute(NotificationCount.__table__.delete())  # type: ignore[attr-defined]
    conn.execute(ProviderCallCount.__table__.delete())  # type: ignore[attr-defined]
    _add(conn, NotificationCount, settled_counts(conn, marks))
    _add(conn, ProviderCallCount, call_counts(conn, 0, marks.attempt))


def forget_patient(conn: Connection, patient_id: int) -> None:
    """Erasure, in its transaction and before the delete: take back what the rollup counted for the patient.

    Waits for a tick in progress (the cursor's lock), so none runs between this and the delete's commit.
    """
    row = _lock_cursor(conn, skip_locked=False)
    assert row is not None
    marks = _marks(row)
    if marks == Marks(0, 0):
        return
    mine = col(Notification.patient_id) == patient_id
    _add(conn, NotificationCount, _negated(settled_counts(conn, marks, mine)))
    _add(conn, ProviderCallCount, _negated(call_counts(conn, 0, marks.attempt, patient_id=patient_id)))


def forget_notifications(conn: Connection, notification_ids: Sequence[int]) -> None:
    """Retention, in its transaction and before the delete: take back what the rollup counted for these
    notifications (as :func:`forget_patient` does for an erased patient), so the metrics keep counting what the
    database holds. Waits for a tick in progress (the cursor's lock)."""
    row = _lock_cursor(conn, skip_locked=False)
    assert row is not None
    marks = _marks(row)
    if marks == Marks(0, 0) or not notification_ids:
        return
    ids = list(notification_ids)
    _add(conn, NotificationCount, _negated(settled_counts(conn, marks, col(Notification.id).in_(ids))))
    _add(conn, ProviderCallCount, _negated(call_counts(conn, 0, marks.attempt, notification_ids=ids)))


def read_counts(conn: Connection) -> tuple[list[tuple[StateKey, int]], list[tuple[CallKey, int]]]:
    """The rollup's non-zero counts, as the scrape reports them."""
    settled = conn.execute(
        select(
            col(NotificationCount.state),
            col(NotificationCount.category),
            col(NotificationCount.provider),
            col(NotificationCount.count),
        ).where(col(NotificationCount.count) != 0)
    ).all()
    calls = conn.execute(
        select(
            col(ProviderCallCount.category),
            col(ProviderCallCount.channel),
            col(ProviderCallCount.provider),
            col(ProviderCallCount.outcome),
            col(ProviderCallCount.count),
        ).where(col(ProviderCallCount.count) != 0)
    ).all()
    return (
        [((str(s), str(c), str(p)), int(n)) for s, c, p, n in settled],
        [((str(c), str(ch), str(p), str(o)), int(n)) for c, ch, p, o, n in calls],
    )


def open_counts(conn: Connection) -> Iterable[tuple[StateKey, int]]:
    """Open notifications counted now, through ``ix_notification_due`` (only open rows are in it), with the
    provider of each one's last attempt (a retrying row has one) by ``ix_delivery_attempt_notification_id``."""
    last_provider = (
        select(col(DeliveryAttempt.provider))
        .where(col(DeliveryAttempt.notification_id) == col(Notification.id))
        .order_by(col(DeliveryAttempt.id).desc())
        .limit(1)
        .correlate(Notification)
        .scalar_subquery()
    )
    rows = (
        select(
            col(Notification.state).label("state"),
            col(Notification.category).label("category"),
            last_provider.label("provider"),
        )
        # As literals, like the index's own predicate: SQLite uses a partial index only for a WHERE it can see
        # implies the index's (bound parameters hide that), PostgreSQL either way.
        .where(col(Notification.state).in_(bindparam("open_states", [s.value for s in OPEN], literal_execute=True)))
        .subquery()
    )
    for state, category, provider, count in conn.execute(
        select(rows.c.state, rows.c.category, rows.c.provider, func.count()).group_by(
            rows.c.state, rows.c.category, rows.c.provider
        )
    ):
        yield (str(state), str(category), provider or NO_PROVIDER), int(count)
