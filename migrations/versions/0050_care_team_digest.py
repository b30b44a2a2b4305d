"""care-team notices: digest, read receipts and escalation

One ``care_team_message`` row per notice made for a platform message, written in the notification's own insert
statement: which head notice it folded into, when she read it, when its follow-up is due and what became of it.
Two partial indexes: the patient's head notices (the digest's lookup at submit time) and the notices still
waiting for a follow-up (the scheduler's scan), so neither lookup reads rows that cannot matter.

Revision ID: 0050
Revises: 0045
Create Date: 2026-11-28 15:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0050"
down_revision: str | Sequence[str] | None = "0045"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
HEADS = sa.text("digest_of IS NULL")
WAITING = sa.text("escalate_at IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "care_team_message",
        sa.Column("notification_id", BIG_ID, nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("digest_of", BIG_ID, nullable=True),
        sa.Column("read_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("escalate_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("escalation", sa.String(length=16), nullable=True),
        sa.Column("escalation_id", BIG_ID, nullable=True),
        sa.Column("escalation_reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.ForeignKeyConstraint(["notification_id"], ["notification.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("notification_id"),
    )
    op.create_index(
        "ix_care_team_message_head",
        "care_team_message",
        ["patient_id", "created_at"],
        unique=False,
        postgresql_where=HEADS,
        sqlite_where=HEADS,
    )
    op.create_index(
        "ix_care_team_message_due",
        "care_team_message",
        ["escalate_at"],
        unique=False,
        postgresql_where=WAITING,
        sqlite_where=WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_care_team_message_due", table_name="care_team_message")
    op.drop_index("ix_care_team_message_head", table_name="care_team_message")
    op.drop_table("care_team_message")
