"""A read CVV leaves no copy of its ciphertext or wrapped key in the SQLite files, WAL included.

secure_delete zeroes deleted rows in the database file; the old page images in the WAL are cut
by a checkpoint right after the read (and after a purge of expired tokens).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from api.wiring import Components
from tests.conftest import Clock, make_components
from tests.vault.tokens.test_service import GATEWAY, HERE, read, tokenize_one
from vault.access.operators import StepUp
from vault.audit.trail import Actor
from vault.storage.schema import data_keys, domain_keys, tokens


@pytest.fixture
def sqlite_parts(tmp_path: Path, sqlite_url: str, clock: Clock) -> Iterator[tuple[Components, Path]]:
    parts = make_components(tmp_path / "data", sqlite_url, clock)
    yield parts, Path(sqlite_url.removeprefix("sqlite:///"))
    parts.trail.close()
    parts.engine.dispose()


def _secrets_of(parts: Components, token: str) -> list[bytes]:
    with parts.engine.connect() as conn:
        row = conn.execute(select(tokens.c.ciphertext, data_keys.c.wrapped)
                           .join(data_keys, data_keys.c.id == tokens.c.data_key_id)
                           .where(tokens.c.token == token)).one()
    return [bytes(row.ciphertext), bytes(row.wrapped)]


def _files(database: Path) -> bytes:
    return b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*") if path.is_file())


def test_a_read_cvv_leaves_no_copy_in_the_database_or_its_wal(sqlite_parts: tuple[Components, Path]) -> None:
    parts, database = sqlite_parts
    record = tokenize_one(parts, "cvv", "987")
    left = _secrets_of(parts, record.token)
    assert all(secret in _files(database) for secret in left)  # the check below can see them
    assert read(parts, GATEWAY, record.token, "payment") == "987"
    assert [secret in _files(database) for secret in left] == [False, False]


def test_an_expired_cvv_purged_leaves_no_copy(sqlite_parts: tuple[Components, Path], clock: Clock) -> None:
    parts, database = sqlite_parts
    record = tokenize_one(parts, "cvv", "654", ttl_seconds=60)
    left = _secrets_of(parts, record.token)
    clock.advance(61)
    assert parts.tokens.purge_expired() == 1
    assert [secret in _files(database) for secret in left] == [False, False]


def test_an_erased_subject_leaves_no_copy_of_its_keys(sqlite_parts: tuple[Components, Path]) -> None:
    parts, database = sqlite_parts
    record = tokenize_one(parts, "email", "erase.me@example.com", subject_id="cust-erase")
    left = _secrets_of(parts, record.token)
    assert all(secret in _files(database) for secret in left)
    parts.privacy.erase(Actor(id="cli_officer", role="privacy_officer"), "cust-erase", HERE)
    assert [secret in _files(database) for secret in left] == [False, False]


def test_a_deleted_token_leaves_no_copy(sqlite_parts: tuple[Components, Path]) -> None:
    parts, database = sqlite_parts
    record = tokenize_one(parts, "card", {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099})
    left = _secrets_of(parts, record.token)
    parts.tokens.delete(Actor(id="cli_officer", role="privacy_officer"), record.token, HERE)
    assert [secret in _files(database) for secret in left] == [False, False]


def test_a_corrected_value_leaves_no_copy_of_the_old_one(sqlite_parts: tuple[Components, Path]) -> None:
    parts, database = sqlite_parts
    record = tokenize_one(parts, "email", "old.address@example.com")
    left = _secrets_of(parts, record.token)
    officer = StepUp(actor=Actor(id="cli_officer", role="privacy_officer"), at=datetime.now(UTC))
    parts.privacy.correct(officer, record.token, "new.address@example.com", HERE)
    assert [secret in _files(database) for secret in left] == [False, False]


def test_reencryption_after_compromise_leaves_no_copy_of_the_old_keys(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_KEY_CACHE_SECONDS="0.3")
    database = Path(sqlite_url.removeprefix("sqlite:///"))
    try:
        made = [tokenize_one(parts, "email", f"victim{i}@example.com") for i in range(5)]
        left = [secret for record in made for secret in _secrets_of(parts, record.token)]
        with parts.engine.connect() as conn:
            compromised, wrapped = conn.execute(select(domain_keys.c.id, domain_keys.c.wrapped)
                                                .where(domain_keys.c.active_for == "data")).one()
        left.append(wrapped.encode())  # the KEK-wrapped domain key, stored as text
        job = parts.lifecycle.start_reencrypt(Actor(id="admin-1", role="admin"), compromised, HERE)
        assert parts.lifecycle.run(job, batch=2)["status"] == "done"
        assert [secret for secret in left if secret in _files(database)] == []
    finally:
        parts.trail.close()
        parts.engine.dispose()
