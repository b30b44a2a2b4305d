"""Migrations run on SQLite and PostgreSQL and match the models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from worker.db import make_engine
from worker.migrate import downgrade, upgrade
from worker.schema import load_all_models


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, load_all_models()))
    finally:
        engine.dispose()


def test_sqlite_migrations_match_models_and_round_trip(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert _diff(sqlite_url) == []
    downgrade(engine)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(engine)
    assert "notification" in inspect(engine).get_table_names()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_migrations_match_models(pg_url: str) -> None:
    assert _diff(pg_url) == []
    engine = make_engine(pg_url)
    indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("notification")}
    assert "ix_notification_due" in indexes
    engine.dispose()
