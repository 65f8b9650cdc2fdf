"""PostgreSQL pool: a connection the server closed is replaced before use (socket check; a ping after idling)."""

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


def test_a_connection_killed_moments_after_use_is_replaced_before_use(_postgres_url: str) -> None:
    """Within the idle window (no ping), the terminated backend's notice makes the socket readable: replaced."""
    engine = create_engine_for(_postgres_url, pool_size=1)
    admin = create_engine_for(_postgres_url, pool_size=1)
    try:
        first = _backend_pid(engine)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the backend is gone once pg_stat_activity forgets it
            with admin.connect() as conn:
                if conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                                {"pid": first}).scalar_one() == 0:
                    break
            time.sleep(0.01)
        second = _backend_pid(engine)  # well within PING_AFTER_IDLE_SECONDS: raised OperationalError before
        assert second != first
    finally:
        engine.dispose()
        admin.dispose()


def test_urls_are_normalised_for_psycopg() -> None:
    assert normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
