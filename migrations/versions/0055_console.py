"""operator console sessions; indexes for a patient's activity and for provider health

Revision ID: 0055
Revises: 0050
Create Date: 2026-11-25 15:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0055"
down_revision: str | Sequence[str] | None = "0050"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("csrf_token", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["api_client.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index("ix_console_session_client_id", "console_session", ["client_id"], unique=False)
    op.create_index("ix_notification_patient_created", "notification", ["patient_id", "created_at", "id"], unique=False)
    op.create_index("ix_consent_event_patient_at", "consent_event", ["patient_id", "at", "id"], unique=False)
    op.create_index(
        "ix_delivery_attempt_provider_started", "delivery_attempt", ["provider", "started_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_delivery_attempt_provider_started", table_name="delivery_attempt")
    op.drop_index("ix_consent_event_patient_at", table_name="consent_event")
    op.drop_index("ix_notification_patient_created", table_name="notification")
    op.drop_index("ix_console_session_client_id", table_name="console_session")
    op.drop_table("console_session")
