"""After an erasure and the next epoch, PostgreSQL's heap pages hold no copy of what was erased.

Issue #17, finding 4: an erased subject's records and wrapped data key were read back from dead
tuples with `pageinspect`. Here the raw heap pages of `tokens` and `data_keys` are read with
`get_raw_page` (the extension is created as superuser in a database of the test's own): right
after the erasure the erased ciphertexts and wrapped key are still there (so the check can see
them), and after `tokenvault keys epoch` (which VACUUMs the vault's tables) they are not.
PostgreSQL only: SQLite zeroes deleted rows at once (secure_delete; test_deleted_copies.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine

from api.wiring import Components
from tests.conftest import make_components
from tests.support import database
from tests.support.cards import CHECKOUT, HERE
from vault.audit.trail import Actor
from vault.storage.engine import normalise_url
from vault.storage.schema import data_keys, tokens
from vault.tokens.records import TokenRecord, TokenRequest

ADMIN = Actor(id="admin-1", role="admin")
OFFICER = Actor(id="officer-1", role="privacy_officer")
ERASED, KEPT = "dead-tuple-erased", "dead-tuple-kept"


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[tuple[Components, Engine]]:
    """A fresh database (autovacuum must not clean up before the first look) and a superuser engine on it."""
    with database.postgres_database() as url:
        pages = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
        try:
            with pages.connect() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS pageinspect"))
                for table in ("tokens", "data_keys"):
                    conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
        except Exception as exc:  # the package that ships pageinspect is missing, or we are not superuser
            pages.dispose()
            reason = (f"pageinspect cannot be installed here ({type(exc).__name__}): check dead tuples by hand "
                      "as README.md, Keys, describes")
            if database.required():  # CI's PostgreSQL ships it (contrib): there, a missing extension is a failure
                pytest.fail(reason)
            pytest.skip(reason)
        parts = make_components(tmp_path / "data", url, TOKENVAULT_KEY_CACHE_SECONDS="0.2")
        yield parts, pages
        parts.trail.close()
        parts.engine.dispose()
        pages.dispose()


def _heap(pages: Engine, table: str) -> bytes:
    """Every heap page of `table` as PostgreSQL has it (shared buffers included), live and dead tuples."""
    with pages.connect() as conn:
        count = conn.execute(text("SELECT pg_relation_size(CAST(:t AS regclass)) / current_setting('block_size')::int"),
                             {"t": table}).scalar_one()
        return b"".join(bytes(conn.execute(text("SELECT get_raw_page(:t, :n)"), {"t": table, "n": n}).scalar_one())
                        for n in range(int(count)))


def _copies(parts: Components, subject: str) -> list[bytes]:
    """The ciphertexts of a subject's records and its wrapped data keys, as stored."""
    with parts.engine.connect() as conn:
        found = [bytes(c) for c in conn.execute(select(tokens.c.ciphertext).where(tokens.c.subject_id == subject))
                 .scalars()]
        found += [bytes(w) for w in conn.execute(select(data_keys.c.wrapped).where(data_keys.c.subject_id == subject))
                  .scalars()]
    return found


def test_erased_rows_leave_no_copy_in_heap_pages_after_the_epoch(postgres: tuple[Components, Engine]) -> None:
    parts, pages = postgres
    requests = [TokenRequest(kind=kind, value=value, subject_id=subject)
                for subject in (ERASED, KEPT)
                for kind, value in (("email", f"{subject}@example.com"), ("name", f"Name of {subject}"))]
    made = parts.tokens.tokenize(CHECKOUT, requests, HERE)
    assert all(isinstance(m, TokenRecord) for m in made)
    erased, kept = _copies(parts, ERASED), _copies(parts, KEPT)
    assert len(erased) >= 3  # two ciphertexts and the subject's data key(s)
    parts.privacy.erase(OFFICER, ERASED, HERE)
    heap = _heap(pages, "tokens") + _heap(pages, "data_keys")
    assert [copy in heap for copy in erased] == [True] * len(erased)  # dead tuples: the window the epoch closes

    job = parts.lifecycle.start_epoch(ADMIN, HERE)
    assert parts.lifecycle.run(job, batch=100)["status"] == "done"

    heap = _heap(pages, "tokens") + _heap(pages, "data_keys")
    assert [copy in heap for copy in erased] == [False] * len(erased)
    assert kept[:2] == _copies(parts, KEPT)[:2] and all(copy in heap for copy in kept[:2])  # records untouched

