"""the worker holding a claim (its lease is kept alive by that worker's heartbeat)

Revision ID: 0020
Revises: 0015
Create Date: 2026-11-25 13:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0020"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (nullable): no table rebuild on SQLite, no rewrite on PostgreSQL.
    op.add_column("notification", sa.Column("claimed_by", sqlmodel.sql.sqltypes.AutoString(length=96), nullable=True))


def downgrade() -> None:
    op.drop_column("notification", "claimed_by")
