"""care pause (a ledger of pauses and lifts; a survey's behaviour while paused); retention needs no new index

``care_pause_event`` is part of the consent ledger: append-only, a patient's current pause is her latest event.
Its index ``(patient_id, id)`` serves the send-time read (the latest event, one index probe), the campaign
fan-out's exclusion and the retention job's "superseded" check.

``survey_assignment.on_care_pause`` (``defer`` or ``cancel``): existing assignments defer, the default.

Retention walks ``notification``, ``consent_event`` and ``care_pause_event`` by primary key (ids grow with time)
and deletes children through the existing ``notification_id`` indexes; its "superseded" check on the consent
ledger uses ``ix_consent_event_lookup``. No index is added to the tables the delivery path writes.

Revision ID: 0045
Revises: 0040
Create Date: 2026-11-25 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0045"
down_revision: str | Sequence[str] | None = "0040"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "care_pause_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("reason_code", sa.String(length=32), nullable=True),
        sa.Column("until", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("hold_appointment_reminders", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_care_pause_event_patient", "care_pause_event", ["patient_id", "id"], unique=False)
    # A plain ALTER (no table rebuild on SQLite); existing assignments get the default behaviour.
    op.add_column(
        "survey_assignment",
        sa.Column("on_care_pause", sa.String(length=8), nullable=False, server_default="defer"),
    )


def downgrade() -> None:
    op.drop_column("survey_assignment", "on_care_pause")
    op.drop_index("ix_care_pause_event_patient", table_name="care_pause_event")
    op.drop_table("care_pause_event")
