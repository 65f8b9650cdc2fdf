"""bin counts: card tokens issued keeping each BIN (keep_bin), capped so guessing one stays pointless

Revision ID: 0021h1920
Revises: h15_rollback_0021
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021h1920"
down_revision = "h15_rollback_0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bin_counts",
        sa.Column("bin", sa.String(length=6), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("issued", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bin", "length"),
    )


def downgrade() -> None:
    op.drop_table("bin_counts")
