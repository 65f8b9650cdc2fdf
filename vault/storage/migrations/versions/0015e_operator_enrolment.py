"""operator enrolment: one-time enrolment codes (a keyed hash and an expiry on the operator)

Existing operators keep their password and TOTP (they are enrolled): nothing to backfill.
Two nullable columns and an index: no table rebuild on SQLite.

Revision ID: 0015e
Revises: 0002, 0004
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.storage.schema

revision = "0015e"
down_revision = ("0002", "0004")  # operators come from 0002; 0004 is the other head
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("operators", sa.Column("enrolment_hash", sa.LargeBinary(length=32), nullable=True))
    op.add_column("operators", sa.Column("enrolment_expires_at", vault.storage.schema.UTCDateTime(), nullable=True))
    op.create_index(op.f("ix_operators_enrolment_hash"), "operators", ["enrolment_hash"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_operators_enrolment_hash"), table_name="operators")
    with op.batch_alter_table("operators", schema=None) as batch_op:
        batch_op.drop_column("enrolment_expires_at")
        batch_op.drop_column("enrolment_hash")
