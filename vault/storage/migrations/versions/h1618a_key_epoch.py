"""key epoch and its acknowledgements (issue #18: key jobs wait for workers, not the cache window)

Revision ID: h1618a
Revises: 0021h1920
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.storage.schema

revision = "h1618a"
down_revision = "0021h1920"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_epoch",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "key_epoch_acks",
        sa.Column("worker", sa.String(length=80), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.Column("row_mac", sa.String(length=120), nullable=True),
        sa.PrimaryKeyConstraint("worker"),
    )


def downgrade() -> None:
    op.drop_table("key_epoch_acks")
    op.drop_table("key_epoch")
