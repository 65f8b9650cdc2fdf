"""audit: seq under the MAC, authenticated archive records, checkpoint signing key and sink heads

Revision ID: 0016a
Revises: 0020a
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.storage.schema

revision = "0016a"
down_revision = "0020a"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("mac_scheme", sa.SmallInteger(), server_default="1", nullable=False))
    with op.batch_alter_table("audit_archives") as batch:
        batch.add_column(sa.Column("last_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("mac_key_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("record_mac", sa.LargeBinary(length=32), nullable=True))
    op.create_table(
        "audit_sequence",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("next_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_sequence")),
    )
    # Backfill: the next seq follows every seq ever handed out that the table still shows.
    op.execute("INSERT INTO audit_sequence (name, next_seq) SELECT 'audit', COALESCE(MAX(seq), 0) + 1 "
               "FROM audit_events")
    if op.get_bind().dialect.name == "postgresql":  # never behind a seq the table shows, never backwards
        op.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'seq'), GREATEST("
                   "(SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_events), "
                   "nextval(pg_get_serial_sequence('audit_events', 'seq'))), false)")
    op.create_table(
        "audit_signing_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.Column("created_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_signing_keys")),
    )
    op.create_table(
        "audit_verify_jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("started_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.Column("updated_at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.Column("finished_at", vault.storage.schema.UTCDateTime(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("resume", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verify_jobs")),
    )
    op.create_index("ix_audit_verify_jobs_started_at", "audit_verify_jobs", ["started_at"])
    op.create_table(
        "audit_sink_heads",
        sa.Column("sink", sa.String(length=255), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("at", vault.storage.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sink", name=op.f("pk_audit_sink_heads")),
    )


def downgrade() -> None:
    op.drop_table("audit_sink_heads")
    op.drop_index("ix_audit_verify_jobs_started_at", table_name="audit_verify_jobs")
    op.drop_table("audit_verify_jobs")
    op.drop_table("audit_signing_keys")
    op.drop_table("audit_sequence")
    with op.batch_alter_table("audit_archives") as batch:
        batch.drop_column("record_mac")
        batch.drop_column("mac_key_id")
        batch.drop_column("last_seq")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("mac_scheme")
