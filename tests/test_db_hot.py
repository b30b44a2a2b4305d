"""The hot path's PostgreSQL connections (``worker.db.run_raw``): kept in autocommit, detached from SQLAlchemy's
pool, closed by ``engine.dispose()``, and never reused once the server has dropped one; and the statement text
compaction that keeps psycopg's parse cache working."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy.engine import Engine

from worker.db import make_engine, pyformat, retry_transient, run_raw


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def _backend(engine: Engine) -> int:
    return int(run_raw(engine, "SELECT pg_backend_pid() AS pid", {})[0]["pid"])


def _at_once(statement: Callable[[], None], times: int) -> None:
    """Run ``statement`` on ``times`` threads at once and wait for all."""
    threads = [threading.Thread(target=statement) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _terminate(pg_url: str, pids: list[int]) -> None:
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_statement_runs_in_autocommit_on_a_reused_connection(engine: Engine) -> None:
    first = _backend(engine)
    assert _backend(engine) == first, "one thread's statements reuse the warm connection (its prepared statements)"
    rows = run_raw(
        engine, "SELECT current_setting('transaction_isolation') AS iso, now() = statement_timestamp() AS ac", {}
    )
    assert rows == [{"iso": "read committed", "ac": True}], "each statement is its own transaction"
    assert run_raw(engine, "SELECT 1 AS one WHERE false", {}) == []
    assert run_raw(engine, "SET application_name = 'hot-test'", {}) == [], "a statement without rows returns none"


def test_a_failed_statement_leaves_its_connection_usable(engine: Engine) -> None:
    first = _backend(engine)
    with pytest.raises(psycopg.errors.DivisionByZero):
        run_raw(engine, "SELECT 1 / 0 AS boom", {})
    assert _backend(engine) == first, "autocommit: nothing was left open, so the connection went back"


def test_a_terminated_backend_fails_once_and_its_idle_siblings_are_not_reused(engine: Engine, pg_url: str) -> None:
    """Several idle connections all killed at once (a server restart, pg_terminate_backend): the first statement
    meets a dead one and fails, and a retry gets a fresh connection at once, not the next dead one."""
    pids: set[int] = set()
    barrier = threading.Barrier(3)

    def busy() -> None:  # three statements at once: three connections, idle together afterwards
        barrier.wait()
        pids.add(int(run_raw(engine, "SELECT pg_backend_pid() AS pid, pg_sleep(0.2) AS slept", {})[0]["pid"]))

    _at_once(busy, 3)
    assert len(pids) >= 3, pids
    _terminate(pg_url, sorted(pids))
    with pytest.raises(psycopg.OperationalError):
        _backend(engine)
    fresh = _backend(engine)
    assert fresh not in pids, "the dead connection's idle siblings were discarded with it"
    assert retry_transient(lambda: _backend(engine), seconds=1.0) == fresh


def test_engine_dispose_closes_the_idle_connections(engine: Engine, pg_url: str) -> None:
    pid = _backend(engine)
    engine.dispose()
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        for _ in range(50):
            alive = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            if alive is not None and alive[0] == 0:
                break
            conn.execute("SELECT pg_sleep(0.02)")
        assert alive == (0,), "disposing the engine closes its hot connections"
    assert _backend(engine) != pid, "and the next statement opens a new one"


def test_pyformat_compacts_white_space_and_comments_but_not_string_literals() -> None:
    sql = pyformat(
        """
SELECT 'two  spaces -- not a comment' AS kept,   -- a comment, gone
       :value AS v,
       'it''s' AS quoted
  FROM t WHERE x::text = :other
"""
    )
    assert sql == (
        "SELECT 'two  spaces -- not a comment' AS kept, %(value)s AS v, 'it''s' AS quoted "
        "FROM t WHERE x::text = %(other)s"
    )


def test_the_hot_statements_fit_psycopgs_parse_cache() -> None:
    """psycopg caches its parse of a statement only up to 4,096 characters: the claim-and-read statement, as
    written, was longer, and was parsed again at every delivery."""
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    from worker.delivery import pg
    from worker.outbox import digest, notifications

    for name, sql in {
        "claim one": pg.CLAIM_AND_READ_ONE,
        "claim batch": pg.CLAIM_AND_READ,
        "record and settle": pg.RECORD_AND_SETTLE_ONE,
        "settle batch": pg.SETTLE,
        "submit": notifications._SUBMIT_PG,
        "submit care-team": digest.SUBMIT_PG,
    }.items():
        assert len(sql.encode()) <= MAX_CACHED_STATEMENT_LENGTH, name


def test_at_most_the_limit_are_open_at_once_and_a_statement_waits_for_one(engine: Engine) -> None:
    """A web process serves requests on many threads: they share a few connections (waiting a moment for one, as
    they waited for the pool), they do not open one each and run the server out of them."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from worker.db import _HOT, _HotConnections

    hot = _HotConnections(engine, limit=2)
    _HOT[engine] = hot
    pids: list[int] = []

    def slow() -> None:
        pids.append(int(run_raw(engine, "SELECT pg_backend_pid() AS pid, pg_sleep(0.3) AS slept", {})[0]["pid"]))

    _at_once(slow, 4)
    assert len(pids) == 4 and len(set(pids)) <= 2, pids

    hot.WAIT_SECONDS = 0.1
    held = [hot.take(), hot.take()]  # both connections in use
    with pytest.raises(PoolTimeout, match="no database connection free"):
        run_raw(engine, "SELECT 1 AS one", {})
    for conn in held:
        hot.give(conn)
    assert run_raw(engine, "SELECT 1 AS one", {}) == [{"one": 1}], "free again once they are back"
