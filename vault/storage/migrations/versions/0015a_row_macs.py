"""row MACs on the rows that decide access (issue #15)

Adds `row_mac` to clients, operators, operator_sessions, approvals, subjects, consents, holds and
disclosures. The column is filled by
`tokenvault init` (vault.keys.row_mac.RowMacs.backfill), which needs the key service:
a migration cannot reach it. Until then those rows fail their check (deny), never grant.

Revision ID: 0015a
Revises: 0016a
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015a"
down_revision = "0016a"
branch_labels = None
depends_on = None

_TABLES = ("clients", "operators", "operator_sessions", "approvals", "subjects", "consents", "holds",
           "disclosures")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("row_mac", sa.String(length=120), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("row_mac")
