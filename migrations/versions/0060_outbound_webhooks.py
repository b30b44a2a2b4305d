"""outbound webhooks (endpoints, events, deliveries, the dispatcher's cursor) and confirm by reply

New tables only, plus three nullable columns on ``appointment`` added in place (no table rebuild: on SQLite a
rebuild would cascade-delete the appointment's reminders and replies).

Revision ID: 0060
Revises: 0055
Create Date: 2026-11-25 15:25:02.537853
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0060"
down_revision: str | Sequence[str] | None = "0055"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "appointment_type_setting",
        sa.Column("appointment_type", sa.String(length=64), nullable=False),
        sa.Column("confirm_by_reply", sa.Boolean(), nullable=False),
        sa.Column("remind_after_confirmation", sa.Boolean(), nullable=False),
        sa.Column("updated_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("appointment_type"),
    )
    op.create_table(
        "webhook_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("event_mark", sa.BigInteger(), nullable=False),
        sa.Column("consent_mark", sa.BigInteger(), nullable=False),
        sa.Column("attempt_mark", sa.BigInteger(), nullable=False),
        sa.Column("reply_mark", sa.BigInteger(), nullable=False),
        sa.Column("dispatched_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
        sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("ordered", sa.Boolean(), nullable=False),
        sa.Column("secret", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("disabled_detail", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
        sa.Column("disabled_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failing_since", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("kicked_until", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=48), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("occurred_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_key"),
    )
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_webhook_event_patient_id"), ["patient_id"], unique=False)

    op.create_table(
        "appointment_reply",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("appointment_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["appointment_id"], ["appointment.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["patient_id"], ["patient.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("appointment_reply", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_appointment_reply_appointment_id"), ["appointment_id"], unique=False)

    op.create_table(
        "webhook_delivery",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_until", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoint.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["event_id"], ["webhook_event.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery"),
    )
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_delivery_due",
            ["endpoint_id", "next_attempt_at"],
            unique=False,
            postgresql_where=sa.text("state IN ('pending', 'sending')"),
            sqlite_where=sa.text("state IN ('pending', 'sending')"),
        )
        batch_op.create_index(batch_op.f("ix_webhook_delivery_event_id"), ["event_id"], unique=False)
        batch_op.create_index(
            "ix_webhook_delivery_order",
            ["endpoint_id", "patient_id", "id"],
            unique=False,
            postgresql_where=sa.text("state IN ('pending', 'sending')"),
            sqlite_where=sa.text("state IN ('pending', 'sending')"),
        )

    with op.batch_alter_table("appointment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("appointment_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column("confirmation", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True))
        batch_op.add_column(sa.Column("confirmation_at", worker.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("appointment", schema=None) as batch_op:
        batch_op.drop_column("confirmation_at")
        batch_op.drop_column("confirmation")
        batch_op.drop_column("appointment_type")

    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_webhook_delivery_order",
            postgresql_where=sa.text("state IN ('pending', 'sending')"),
            sqlite_where=sa.text("state IN ('pending', 'sending')"),
        )
        batch_op.drop_index(batch_op.f("ix_webhook_delivery_event_id"))
        batch_op.drop_index(
            "ix_webhook_delivery_due",
            postgresql_where=sa.text("state IN ('pending', 'sending')"),
            sqlite_where=sa.text("state IN ('pending', 'sending')"),
        )

    op.drop_table("webhook_delivery")
    with op.batch_alter_table("appointment_reply", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_appointment_reply_appointment_id"))

    op.drop_table("appointment_reply")
    with op.batch_alter_table("webhook_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_event_patient_id"))

    op.drop_table("webhook_event")
    op.drop_table("webhook_endpoint")
    op.drop_table("webhook_cursor")
    op.drop_table("appointment_type_setting")
