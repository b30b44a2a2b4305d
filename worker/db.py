"""Engine and session creation; a UTC-preserving datetime type for SQLite and PostgreSQL alike."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import DateTime, Dialect, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, create_engine
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from worker.errors import ConfigError

T = TypeVar("T")


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
    return create_engine(url, pool_size=10, max_overflow=10, hide_parameters=True)


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


def pyformat(sql: str) -> str:
    """``:name`` bind parameters (SQLAlchemy's ``text``) as psycopg's ``%(name)s``; ``::type`` casts stay."""
    return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql)


def run_raw(engine: Engine, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One PostgreSQL statement on a pooled connection in autocommit, straight through psycopg: one round trip
    (psycopg prepares it on its fifth run on a connection, once), and none of SQLAlchemy's per-execution work:
    the hot path's statements are fixed text. ``sql`` uses psycopg's ``%(name)s`` parameters (:func:`pyformat`)."""
    pooled = engine.raw_connection()
    conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
    try:
        conn.autocommit = True
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(sql, params)  # prepared by psycopg after a few runs on a connection
            return cursor.fetchall() if cursor.description is not None else []
    except psycopg.OperationalError:
        pooled.invalidate()  # a dead connection never goes back to the pool
        raise
    finally:
        if not conn.closed:
            conn.autocommit = False
        pooled.close()


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
