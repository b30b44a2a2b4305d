"""the consent ledger's ids are never handed out again on SQLite (outbound webhooks read it past a watermark)

The outbound-webhook dispatcher reads ``consent_event`` past a watermark (``consent.changed``). SQLite hands a
deleted top rowid out again unless the table is AUTOINCREMENT, so an erasure deleting the newest ledger rows would
let the next consent change slip under the watermark and its event never go out. Only a table rebuild changes that
(nothing refers to ``consent_event``'s ids, so the rebuild cascades nowhere); on PostgreSQL ids come from sequences,
which never go back, and nothing changes.

Revision ID: 0065
Revises: 0060
Create Date: 2026-11-25 17:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0065"
down_revision: str | Sequence[str] | None = "0060"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite_autoincrement(enabled: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("consent_event", recreate="always", table_kwargs={"sqlite_autoincrement": enabled}):
        pass


def upgrade() -> None:
    _sqlite_autoincrement(True)


def downgrade() -> None:
    _sqlite_autoincrement(False)
