"""Alembic migrations produce exactly the schema vault/storage/schema.py describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vault.storage.schema import create_engine_for, metadata


def test_migrations_match_the_model(database_url: str) -> None:
    engine = create_engine_for(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []
