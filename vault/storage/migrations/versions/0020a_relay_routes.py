"""relay routes (sealed, versioned, approved under dual control)

Revision ID: 0020a
Revises: 0015e
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.storage.schema

revision = "0020a"
down_revision = "0015e"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "relay_routes",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("data_key_id", sa.String(length=40), nullable=False),
        sa.Column("proposed_by", sa.String(length=40), nullable=False),
        sa.Column("proposed_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.Column("approved_by", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(["data_key_id"], ["data_keys.id"]),
        sa.PrimaryKeyConstraint("name", "version"),
    )


def downgrade() -> None:
    op.drop_table("relay_routes")
