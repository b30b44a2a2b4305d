"""an index for the frequency caps' send-time lookup: a patient's notifications in the capped categories

Revision ID: 0030
Revises: 0025
Create Date: 2026-11-25 14:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030"
down_revision: str | Sequence[str] | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CAPPED_ROWS = sa.text("category IN ('marketing', 'appointment_reminder', 'survey_reminder')")


def upgrade() -> None:
    op.create_index(
        "ix_notification_capped",
        "notification",
        ["patient_id", "category", "id"],
        unique=False,
        postgresql_where=CAPPED_ROWS,
        sqlite_where=CAPPED_ROWS,
    )


def downgrade() -> None:
    op.drop_index("ix_notification_capped", table_name="notification")
