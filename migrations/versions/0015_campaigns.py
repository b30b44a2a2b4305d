"""marketing campaigns, and the campaign each notification came from

Revision ID: 0015
Revises: 0010
Create Date: 2026-11-24 21:35:13.050203
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAMPAIGN_ROWS = sa.text("campaign_id IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "campaign",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
        sa.Column("template", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("launch_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ends_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("fanout_cursor", sa.Integer(), nullable=False),
        sa.Column("audience_size", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.JSON(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("fanout_started_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("fanout_finished_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # A plain ADD COLUMN (no table rebuild on SQLite, no rewrite on PostgreSQL: the column is nullable).
    op.add_column("notification", sa.Column("campaign_id", sa.Integer(), nullable=True))
    op.create_index(
        "ix_notification_campaign",
        "notification",
        ["campaign_id", "state"],
        unique=False,
        postgresql_where=CAMPAIGN_ROWS,
        sqlite_where=CAMPAIGN_ROWS,
    )


def downgrade() -> None:
    op.drop_index("ix_notification_campaign", table_name="notification")
    op.drop_column("notification", "campaign_id")
    op.drop_table("campaign")
