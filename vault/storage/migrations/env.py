"""Alembic environment: runs against the connection handed over by vault.storage.migrate."""

from __future__ import annotations

from alembic import context

from vault.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tokenvault init` (vault.storage.migrate.upgrade)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
