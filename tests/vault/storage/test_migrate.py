"""Alembic migrations produce exactly the schema vault/storage/schema.py describes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from vault.storage.engine import create_engine_for
from vault.storage.migrate import upgrade
from vault.storage.schema import metadata


def test_migrations_match_the_model(database_url: str) -> None:
    engine = create_engine_for(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def test_operators_keep_their_credentials_through_the_enrolment_migration(tmp_path: Path) -> None:
    """0015e adds the enrolment columns to a vault that has operators, sessions and used TOTP steps."""
    engine = create_engine_for(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0002")
    upgrade(engine, "0004")
    now = datetime.now(UTC).isoformat()
    with engine.begin() as conn:
        for statement in (
            "insert into domain_keys (id, purpose, active_for, wrapped, kek_version, created_at) "
            "values ('dk_1', 'totp', 'totp', 'w', 1, :now)",
            "insert into data_keys (id, domain_key_id, purpose, wrapped, created_at) "
            "values ('dek_1', 'dk_1', 'totp', x'00', :now)",
            "insert into operators (id, username, role, password_hash, totp_sealed, totp_key_id, failed_attempts, "
            "created_at) values ('op_1', 'alice', 'admin', '$argon2id$x', x'00', 'dek_1', 0, :now)",
            "insert into operator_sessions (id, operator_id, token_hash, created_at, expires_at) "
            "values ('ses_1', 'op_1', x'01', :now, :now)",
            "insert into totp_uses (operator_id, step, used_at) values ('op_1', 1, :now)",
        ):
            conn.execute(text(statement), {"now": now})
    upgrade(engine)
    with engine.connect() as conn:
        row = conn.execute(text("select password_hash, enrolment_hash, enrolment_expires_at from operators")).one()
        assert tuple(row) == ("$argon2id$x", None, None)  # enrolled: nothing to redo
        assert conn.execute(text("select count(*) from operator_sessions")).scalar_one() == 1
    engine.dispose()
