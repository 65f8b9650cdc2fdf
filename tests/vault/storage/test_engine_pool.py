"""PostgreSQL pool: a connection reused at once is not pinged; one idle long enough is, and is replaced if dead."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from vault.storage import engine as storage
from vault.storage.engine import create_engine_for, normalise_url


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        pid: int = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        return pid


def test_an_idle_connection_killed_by_the_server_is_replaced_before_use(
        _postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "PING_AFTER_IDLE_SECONDS", 0.3)
    engine = create_engine_for(_postgres_url, pool_size=1)
    admin = create_engine_for(_postgres_url, pool_size=1)
    try:
        first = _backend_pid(engine)
        assert _backend_pid(engine) == first  # reused at once: the same backend, no reconnect
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        time.sleep(0.5)
        second = _backend_pid(engine)  # would raise OperationalError had the dead connection been lent
        assert second != first
    finally:
        engine.dispose()
        admin.dispose()


def test_urls_are_normalised_for_psycopg() -> None:
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
