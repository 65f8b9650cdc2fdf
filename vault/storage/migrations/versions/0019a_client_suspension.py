"""client suspension for guessing; audit index by actor and time

Revision ID: 0019a
Revises: 0015a
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.storage.schema

revision = "0019a"
down_revision = "0015a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing clients start unsuspended (NULL): nothing to backfill.
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspended_at", vault.storage.schema.UTCDateTime(), nullable=True))
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_actor_at", ["actor", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_actor_at")
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_column("suspended_at")
