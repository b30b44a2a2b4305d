"""notification: one index less to write, and room on each page for in-place updates

``ix_notification_patient_id`` repeats the first column of ``ix_notification_patient_created`` (patient_id,
created_at, id), which answers every lookup by patient (the console's timeline, erasure, the foreign key's
cascade); every new row and every state change wrote an entry into both. And a PostgreSQL table packed full
cannot update a row in place (a HOT update, no index entries written) when no indexed column changes, as a lease
heartbeat or a "queued" stamp does: a fill factor of 85 leaves each page room for that.

Revision ID: 0070
Revises: 0065
Create Date: 2026-12-07 17:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0070"
down_revision: str | Sequence[str] | None = "0065"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_patient_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notification SET (fillfactor = 85)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE notification RESET (fillfactor)")
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.create_index("ix_notification_patient_id", ["patient_id"], unique=False)
