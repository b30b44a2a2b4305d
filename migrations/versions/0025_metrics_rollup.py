"""the /metrics rollup: settled notifications and provider calls counted from the append-only logs

Revision ID: 0025
Revises: 0020
Create Date: 2026-11-26 10:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import worker.db

revision: str = "0025"
down_revision: str | Sequence[str] | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The rollup reads these past a watermark, so an id must never come back.
LOGS = ("notification_event", "delivery_attempt")


def _sqlite_autoincrement(enabled: bool) -> None:
    """SQLite hands a deleted top rowid out again unless the table is AUTOINCREMENT (an erasure deleting the
    latest rows would otherwise let a new row slip under the watermark). Only a table rebuild can change that;
    on PostgreSQL ids come from sequences, which never go back, so nothing changes there."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in LOGS:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": enabled}):
            pass


def upgrade() -> None:
    op.create_table(
        "metrics_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("event_mark", sa.BigInteger(), nullable=False),
        sa.Column("attempt_mark", sa.BigInteger(), nullable=False),
        sa.Column("rolled_up_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "metrics_notification_count",
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("state", "category", "provider"),
    )
    op.create_table(
        "metrics_provider_call_count",
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("category", "channel", "provider", "outcome"),
    )
    # No backfill here: the first rollup tick counts the existing logs set-based (marks start at 0), so the
    # upgrade stays a few fast DDL statements however big the tables are.
    _sqlite_autoincrement(True)


def downgrade() -> None:
    _sqlite_autoincrement(False)
    op.drop_table("metrics_provider_call_count")
    op.drop_table("metrics_notification_count")
    op.drop_table("metrics_cursor")
