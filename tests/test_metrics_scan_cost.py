"""A /metrics scrape costs what is open, not what exists (the rollup holds the rest).

Every statement a scrape issues is captured as it runs and explained with ``EXPLAIN (ANALYZE, BUFFERS)`` on
PostgreSQL: none may scan the notification table or either log, and with 10x more settled notifications (with
their events and attempts) the scrape must touch about the same buffer pages. Deterministic, unlike a timing;
``bench/metrics.py`` gives the wall-clock figures at 1,000,000 rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine

from tests.conftest import fake_providers
from worker.bootstrap import App
from worker.metrics.rollup import open_counts
from worker.web.app import create_web_app

BIG_TABLES = {"notification", "notification_event", "delivery_attempt"}
OPEN = 100


def _fill(conn: Connection, first: int, count: int, *, state: str) -> None:
    """``count`` notifications from id ``first`` in ``state``, each with a created event, and (unless still
    pending) a sending event, a settling event and an accepted push attempt (half the pending ones have one)."""
    assert state in ("pending", "sent", "delivered")
    pending = state == "pending"
    ids = {"first": first, "last": first + count - 1}
    series = "generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) g"
    not_before = "now() + interval '1 day'" if pending else "NULL"
    steps = "(1, NULL, 'pending')"
    if not pending:
        steps += f", (2, 'pending', 'sending'), (3, 'sending', '{state}')"
    conn.execute(
        text(
            "INSERT INTO notification (id, patient_id, category, context, idempotency_key, state, not_before, "
            "attempt_count, created_at, updated_at) "
            f"SELECT g, 1, 'care_team_message', '{{}}', 'k' || g, '{state}', "
            f"{not_before}, 1, now(), now() "
            f"FROM {series}"
        ),
        ids,
    )
    conn.execute(
        text(
            "INSERT INTO notification_event (notification_id, from_state, to_state, reason, at) "
            f"SELECT g, s.src, s.dst, 'scan', now() FROM {series} "
            f"CROSS JOIN (VALUES {steps}) s(step, src, dst) ORDER BY g, s.step"
        ),
        ids,
    )
    conn.execute(
        text(
            "INSERT INTO delivery_attempt (notification_id, channel, provider, target, outcome, started_at, "
            f"duration_ms) SELECT g, 'push', 'fcm', 'device:1', 'accepted', now(), 5 FROM {series} "
            f"WHERE {'g % 2 = 0' if pending else 'true'}"
        ),
        ids,
    )
    conn.execute(text("SELECT setval('notification_id_seq', :last)"), ids)


def _statements(app: App, client: TestClient) -> list[tuple[str, Any]]:
    """What one ``GET /metrics`` sends to the database, as sent."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(app.engine, "before_cursor_execute", capture)
    try:
        assert client.get("/metrics").status_code == 200
    finally:
        event.remove(app.engine, "before_cursor_execute", capture)
    return [(s, p) for s, p in seen if s.lstrip().upper().startswith(("SELECT", "WITH"))]


def _plans(engine: Engine, statements: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    plans = []
    with engine.connect() as conn:
        for statement, parameters in statements:
            raw = conn.exec_driver_sql(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters or None
            ).scalar_one()
            plans.append((raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"])
        conn.rollback()
    return plans


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _pages(plans: list[dict[str, Any]]) -> int:
    return sum(int(p["Shared Hit Blocks"]) + int(p["Shared Read Blocks"]) for p in plans)


@pytest.mark.postgres
def test_a_scrape_touches_the_same_pages_with_10x_more_settled_rows(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(database_url=pg_url, providers=fake_providers())
    with app.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO patient (id, external_ref, time_zone, locale, created_at, updated_at) "
                "VALUES (1, 'scan', 'UTC', 'en', now(), now())"
            )
        )
        _fill(conn, 1, OPEN, state="pending")
        _fill(conn, OPEN + 1, 5_000, state="sent")
        conn.execute(text("ANALYZE"))
    app.roll_up_metrics()
    with TestClient(create_web_app(app)) as client:
        statements = _statements(app, client)
        small = _plans(app.engine, statements)
        with app.engine.begin() as conn:
            _fill(conn, OPEN + 5_001, 45_000, state="delivered")
            conn.execute(text("ANALYZE"))
        app.metrics_job.rebuild()  # the rollup counts them (set-based: quicker here than ticks over the backlog)
        assert _statements(app, client) == statements  # the same queries (the rollup's rows carry the totals)
        large = _plans(app.engine, statements)

    # The rollup's two count tables, the open rows; and the outbound-webhook endpoints with their open deliveries.
    assert len(statements) == 5
    for plan in small + large:
        for node in _nodes(plan):
            assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") in BIG_TABLES), plan
    used = {node.get("Index Name") for plan in large for node in _nodes(plan)}
    assert {"ix_notification_due", "ix_delivery_attempt_notification_id"} <= used, used
    assert _pages(large) <= _pages(small) * 1.5 + 10, (_pages(small), _pages(large))
    # For scale: a scan over what exists would read every page of the three tables at least once.
    with app.engine.connect() as conn:
        table_pages = conn.execute(
            text(
                "SELECT sum(relpages) FROM pg_class WHERE relname IN ('notification', 'notification_event', "
                "'delivery_attempt')"
            )
        ).scalar_one()
    assert table_pages > 10 * _pages(large), (table_pages, _pages(large))


def test_open_rows_are_counted_through_the_partial_index_on_sqlite(make_app) -> None:  # type: ignore[no-untyped-def]
    app = make_app(providers=fake_providers())
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    with app.engine.connect() as conn:
        event.listen(app.engine, "before_cursor_execute", capture)
        try:
            list(open_counts(conn))
        finally:
            event.remove(app.engine, "before_cursor_execute", capture)
        query, parameters = next((s, p) for s, p in statements if "notification" in s)
        plan = " | ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {query}", parameters))
    assert "ix_notification_due" in plan, plan
    assert "SCAN notification" not in plan and "SCAN n " not in plan, plan
    assert "ix_delivery_attempt_notification_id" in plan, plan
