"""row MACs on privacy requests, retained records, key jobs and relay routes (issue #15)

Adds `row_mac` to privacy_requests, retained_records, key_jobs and relay_routes, and
`operators.totp_used_steps` (TOTP steps used that could still match; NULL, so existing operator
MACs hold). As in 0015a,
`tokenvault init` fills it (vault.keys.row_mac.RowMacs.backfill, which needs the key service);
until then those rows fail their check (deny), never grant.

Revision ID: h15macs1
Revises: 0019a
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h15macs1"
down_revision = "0019a"
branch_labels = None
depends_on = None

_TABLES = ("privacy_requests", "retained_records", "key_jobs", "relay_routes")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("row_mac", sa.String(length=120), nullable=True))
    with op.batch_alter_table("operators") as batch:
        batch.add_column(sa.Column("totp_used_steps", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("totp_used_steps")
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("row_mac")
