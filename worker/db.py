"""Engine and session creation; a UTC-preserving datetime type for SQLite and PostgreSQL alike."""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from sqlalchemy import DateTime, Dialect, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, create_engine
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from worker.errors import ConfigError

T = TypeVar("T")

#: Connections per engine that SQLAlchemy's pool keeps (it may open as many again for a while), and at most how
#: many :func:`run_raw` keeps open at once beside them.
POOL_SIZE = 10


class UTCDateTime(TypeDecorator[datetime]):
    """Stores timezone-aware instants as UTC and always returns them aware.

    SQLite has no time zones; without this a round trip would silently drop the offset.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; pass a timezone-aware instant")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalise_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever the URL's scheme says."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL, foreign keys and a busy timeout for a few worker threads."""
    try:
        url = normalise_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it; do not echo credentials
        raise ConfigError("CARENOTIFY_DATABASE_URL is not a valid database URL") from exc
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _begin_immediate).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # Take the write lock up front: a WAL reader that later writes after another commit fails at once
            # with SQLITE_BUSY_SNAPSHOT, which busy_timeout cannot wait out. Worker threads then queue instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # No ping per checkout (a round trip on every transaction): a connection found dead is retried where it matters
    # (retry_transient on the send path, the next tick for jobs), and SQLAlchemy then recycles the whole pool.
    # Parameters stay out of error messages and logs: they carry phone numbers and email addresses.
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, hide_parameters=True)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A short transaction: commit on success, roll back on error. Never held across a provider call."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def is_transient(exc: BaseException) -> bool:
    """A database error that a new connection may not have: the connection was lost or the server is away."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError)
    return isinstance(exc, psycopg.OperationalError)


_LITERAL_COMMENT_OR_SPACE = re.compile(r"('(?:[^']|'')*')|(?:--[^\n]*|\s)+")


def _compact(match: re.Match[str]) -> str:
    return match.group(1) or " "


def pyformat(sql: str) -> str:
    """``:name`` bind parameters (SQLAlchemy's ``text``) as psycopg's ``%(name)s``; ``::type`` casts stay.

    Comments go and runs of white space become one space (string literals are kept as written): psycopg caches
    its parse of a statement's text only up to 4,096 characters, and the claim-and-read statement, as written for
    people, was longer, so it was parsed again at every run."""
    compact = _LITERAL_COMMENT_OR_SPACE.sub(_compact, sql).strip()
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", compact)


def run_raw(engine: Engine, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One PostgreSQL statement in autocommit, straight through psycopg: one round trip (psycopg prepares it on its
    sixth run on a connection, once), and none of SQLAlchemy's per-execution work: the hot path's statements are
    fixed text. ``sql`` uses psycopg's ``%(name)s`` parameters (:func:`pyformat`). A connection the server dropped
    is closed and the error raised (callers retry with :func:`retry_transient`, which takes a new one)."""
    hot = _hot_connections(engine)
    conn = hot.take()
    try:
        conn.cursor.execute(sql, params)
        names = _result_names(sql, conn.cursor)
        rows = [] if names is None else [dict(zip(names, row, strict=True)) for row in conn.cursor.fetchall()]
    except psycopg.OperationalError:
        hot.discard(conn)  # a dead connection never goes back,
        hot.discard_idle()  # nor do its siblings: a server restart or a terminated backend seldom comes alone
        raise
    except psycopg.Error:
        hot.give(conn)  # the statement failed, the connection did not (autocommit: nothing left open)
        raise
    except BaseException:
        hot.discard(conn)  # interrupted mid-protocol: its state is unknown
        raise
    hot.give(conn)
    return rows


#: A statement's result column names, by its text (fixed text, fixed shape): building psycopg's ``description``
#: for each run cost more than a third of the client's work on a claim (one object per column).
_NAMES: dict[str, tuple[str, ...] | None] = {}
_NAMES_KEPT = 256


def _result_names(sql: str, cursor: psycopg.Cursor[Any]) -> tuple[str, ...] | None:
    try:
        return _NAMES[sql]
    except KeyError:
        description = cursor.description
        names = None if description is None else tuple(column.name for column in description)
        if len(_NAMES) < _NAMES_KEPT:  # an ad-hoc text (a test's, an operator's) never grows it without end
            _NAMES[sql] = names
        return names


@dataclass
class _HotConnection:
    """A psycopg connection in autocommit with its cursor, detached from SQLAlchemy's pool (``fairy`` kept so the
    connection lives as long as this does)."""

    fairy: Any
    conn: psycopg.Connection[Any]
    cursor: psycopg.Cursor[Any]
    generation: int

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a broken connection may fail again; it is gone either way
            pass


class _HotConnections:
    """The connections :func:`run_raw` uses, per engine: opened through the engine's pool (so its ``connect``
    listeners run), then detached and kept in autocommit. Taking one from SQLAlchemy's pool for each statement,
    switching it to autocommit and back, cost more client CPU than the statement's own protocol work. Idle ones
    are kept last-in first-out (a few stay warm, with their prepared statements); ``engine.dispose()`` closes
    them, and a forked child never uses its parent's. At most ``limit`` are open at once (as many as the pool
    itself keeps), so a burst of requests on a web process's many threads waits a moment for one, as it waited for
    the pool, instead of opening a connection per thread and running the server out of them."""

    #: How long a statement waits for a connection when ``limit`` are in use (the pool's own timeout).
    WAIT_SECONDS = 30.0

    def __init__(self, engine: Engine, *, limit: int = POOL_SIZE) -> None:
        self._engine = weakref.ref(engine)  # the registry holds this by the engine's weak key: no strong way back
        self._limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._idle: deque[_HotConnection] = deque()
        self._generation = 0
        self._pid = os.getpid()
        event.listen(engine, "engine_disposed", self._disposed)

    def take(self) -> _HotConnection:
        if self._pid != os.getpid():  # forked: the parent's connections are the parent's
            self._idle = deque()
            self._slots = threading.BoundedSemaphore(self._limit)
            self._pid = os.getpid()
        if not self._slots.acquire(timeout=self.WAIT_SECONDS):
            raise PoolTimeout(f"no database connection free for {self.WAIT_SECONDS:.0f} s ({self._limit} in use)")
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            engine = self._engine()
            if engine is None:
                raise RuntimeError("the engine behind these connections was garbage-collected")
            fairy = engine.raw_connection()
            conn: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
            fairy.detach()
            conn.autocommit = True
            return _HotConnection(fairy, conn, conn.cursor(), self._generation)
        except BaseException:
            self._slots.release()
            raise

    def give(self, conn: _HotConnection) -> None:
        usable = not conn.conn.closed and conn.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if usable and conn.generation == self._generation:
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.release()

    def discard(self, conn: _HotConnection) -> None:
        """Close a connection taken with :meth:`take` instead of giving it back."""
        conn.close()
        self._slots.release()

    def _disposed(self, _engine: Engine) -> None:
        self.discard_idle()

    def discard_idle(self) -> None:
        """Close every idle connection; those in use are closed when given back."""
        self._generation += 1
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


_HOT: weakref.WeakKeyDictionary[Engine, _HotConnections] = weakref.WeakKeyDictionary()
_HOT_LOCK = threading.Lock()


def _hot_connections(engine: Engine) -> _HotConnections:
    try:
        return _HOT[engine]
    except KeyError:
        with _HOT_LOCK:
            if engine not in _HOT:
                _HOT[engine] = _HotConnections(engine)
            return _HOT[engine]


def retry_transient(fn: Callable[[], T], *, seconds: float) -> T:
    """Run ``fn`` (a whole transaction), again on a transient database error, for up to ``seconds``.

    For writes that must not be lost when a connection is killed mid-transaction (a provider's answer, a
    settled row); anything else is raised at once. The first try runs straight (no retry machinery on the hot
    path); only a transient failure starts the retries.
    """
    try:
        return fn()
    except Exception as exc:
        if not is_transient(exc):
            raise
    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        reraise=True,
    )
    return retrying(fn)
