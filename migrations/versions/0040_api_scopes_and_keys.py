"""api clients get scopes and several keys; care-team message_ids are deduplicated globally

Every client that existed before scopes gets every API scope (notify, patients, preferences, campaigns, erase,
read), so nothing breaks on upgrade; narrow them with ``carenotify api-key set-scopes``. ``console`` is new and is
never implied. Each client's key moves to ``api_key`` (same key_id and digest: the key keeps working), so a client
can hold several keys and rotate one without becoming another client.

Care-team notices were deduplicated per client (``api:<client>:care_team_message:<message_id>``); they now are
per ``message_id`` (``care_team_message:<message_id>``). The first notification of each message_id takes the new
key, so a retry after the upgrade finds it instead of notifying the patient again.

Revision ID: 0040
Revises: 0035
Create Date: 2026-11-26 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import worker.db

revision: str = "0040"
down_revision: str | Sequence[str] | None = "0035"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The API scopes of this release, sorted and comma-separated as worker.web.auth stores them.
ALL_API_SCOPES = "campaigns,erase,notify,patients,preferences,read"
OLD_PREFIX = "api:"
MARKER = ":care_team_message:"


def upgrade() -> None:
    # No table is rebuilt: on SQLite a rebuild drops api_client, and with foreign keys on that deletes (ON DELETE
    # CASCADE) every row referring to it, the keys copied below and the Idempotency-Key records. Plain ALTERs only
    # (SQLite >= 3.35 drops columns in place).
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("key_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", worker.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", worker.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["client_id"], ["api_client.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_key_client_id", "api_key", ["client_id"], unique=False)
    op.create_index("ix_api_key_key_id", "api_key", ["key_id"], unique=True)
    op.execute(
        "INSERT INTO api_key (client_id, key_id, key_sha256, created_at, revoked_at) "
        "SELECT id, key_id, key_sha256, created_at, NULL FROM api_client ORDER BY id"
    )
    # The column's default grants nothing (SQLite cannot drop a default in place); existing clients get every
    # API scope explicitly.
    op.add_column(
        "api_client",
        sa.Column("scopes", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False, server_default=""),
    )
    op.execute(f"UPDATE api_client SET scopes = '{ALL_API_SCOPES}'")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("api_client", "scopes", server_default=None)
    op.drop_index("ix_api_client_key_id", table_name="api_client")
    op.drop_column("api_client", "key_sha256")
    op.drop_column("api_client", "key_id")
    _rekey_care_team_messages()


def _rekey_care_team_messages() -> None:
    """``api:<client>:care_team_message:<id>`` -> ``care_team_message:<id>`` for the first row of each id.

    Set-based (one statement, PostgreSQL and SQLite); later rows of the same id (another client's duplicate, the
    very thing this release stops) keep their old key. Only rows with the old prefix are touched.
    """
    find = "strpos" if op.get_bind().dialect.name == "postgresql" else "instr"
    tail = f"substr(idempotency_key, {find}(idempotency_key, '{MARKER}') + {len(MARKER)})"
    op.execute(
        f"""
        WITH old AS (
            SELECT id, {tail} AS message_id,
                   row_number() OVER (PARTITION BY {tail} ORDER BY id) AS nth
            FROM notification
            WHERE category = 'care_team_message' AND idempotency_key LIKE '{OLD_PREFIX}%{MARKER}%'
        )
        UPDATE notification
        SET idempotency_key = 'care_team_message:' || (SELECT message_id FROM old WHERE old.id = notification.id)
        WHERE id IN (
            SELECT id FROM old WHERE nth = 1 AND NOT EXISTS (
                SELECT 1 FROM notification taken WHERE taken.idempotency_key = 'care_team_message:' || old.message_id
            )
        )
        """
    )


def downgrade() -> None:
    # One key per client before 0040: each client keeps its newest live key (a client with none is revoked).
    # The columns come back nullable on SQLite (making them NOT NULL would rebuild the table, see upgrade).
    op.add_column("api_client", sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
    op.add_column("api_client", sa.Column("key_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    newest = (
        "SELECT k.{column} FROM api_key k WHERE k.client_id = api_client.id "
        "ORDER BY CASE WHEN k.revoked_at IS NULL THEN 0 ELSE 1 END, k.id DESC LIMIT 1"
    )
    op.execute(
        f"UPDATE api_client SET key_id = ({newest.format(column='key_id')}), "
        f"key_sha256 = ({newest.format(column='key_sha256')})"
    )
    op.execute(
        "UPDATE api_client SET revoked_at = created_at WHERE revoked_at IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM api_key k WHERE k.client_id = api_client.id AND k.revoked_at IS NULL)"
    )
    op.execute("DELETE FROM api_client WHERE key_id IS NULL")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("api_client", "key_id", nullable=False)
        op.alter_column("api_client", "key_sha256", nullable=False)
    op.create_index("ix_api_client_key_id", "api_client", ["key_id"], unique=True)
    op.drop_column("api_client", "scopes")
    op.drop_index("ix_api_key_key_id", table_name="api_key")
    op.drop_index("ix_api_key_client_id", table_name="api_key")
    op.drop_table("api_key")
    # Care-team notices keep their global keys: the old code never looks them up again.
