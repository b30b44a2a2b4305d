"""Counting PostgreSQL round trips from the wire: libpq's protocol trace on every connection an engine opens,
one file each, and one ``ReadyForQuery`` from the server per round trip (a simple query, or an
extended-protocol Sync)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import event
from sqlalchemy.engine import Engine

_FLAGS = psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE


class RoundTrips:
    def __init__(self) -> None:
        self._traced: list[tuple[Any, int, str]] = []
        self._mark = 0

    def trace(self, dbapi_conn: Any) -> None:
        fd, path = tempfile.mkstemp(prefix="carenotify-pgtrace-")
        dbapi_conn.pgconn.trace(fd)
        dbapi_conn.pgconn.set_trace_flags(_FLAGS)
        self._traced.append((dbapi_conn, fd, path))

    def total(self) -> int:
        """Round trips so far, on every traced connection (each trace is flushed first)."""
        count = 0
        for conn, fd, path in self._traced:
            if not conn.closed:
                conn.pgconn.untrace()  # libpq flushes the trace stream here
                conn.pgconn.trace(os.dup(fd))
                conn.pgconn.set_trace_flags(_FLAGS)
            with open(path) as fh:
                count += sum(1 for line in fh if line.startswith("B") and "\tReadyForQuery" in line)
        return count

    def since_mark(self) -> int:
        """Round trips since the last call (or since counting began)."""
        now = self.total()
        count, self._mark = now - self._mark, now
        return count

    def close(self) -> None:
        for conn, fd, path in self._traced:
            if not conn.closed:
                conn.pgconn.untrace()
            os.close(fd)
            os.unlink(path)


@contextmanager
def counting_round_trips(engine: Engine) -> Iterator[RoundTrips]:
    """Trace every connection ``engine`` opens from now on (its pool is emptied first)."""
    trips = RoundTrips()

    def trace(dbapi_conn: Any, _record: Any) -> None:
        trips.trace(dbapi_conn)

    engine.dispose()
    event.listen(engine, "connect", trace)
    try:
        yield trips
    finally:
        event.remove(engine, "connect", trace)
        engine.dispose()
        trips.close()
