"""web hardening: no schema change (the anchor of this release's migrations)

Idempotency keys and webhook receipts get lifetimes and are cleaned by the scheduler's ``web_retention`` job,
which walks each table in primary-key order (ids grow with ``created_at`` / ``received_at``), so it needs no
new index and the insert path pays for none. An idempotency key left in progress by a request that died is
taken over by replacing its row (a new id), so the dead request can no longer store or release it: that too
works on the columns 0005 created.

Revision ID: 0035
Revises: 0030
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

revision: str = "0035"
down_revision: str | Sequence[str] | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
