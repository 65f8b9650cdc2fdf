"""The SQLite writer lock: one transaction at a time, handed over at COMMIT or ROLLBACK, never leaked."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from vault.storage.engine import create_engine_for
from vault.storage.writer_lock import GatedConnection, lock_path_for


def _holder_and_waiter(path: Path, finish: str) -> list[str]:
    """A holds the lock, B asks for it; returns the order things happened in."""
    first = GatedConnection(str(path), isolation_level=None, check_same_thread=False)
    second = GatedConnection(str(path), isolation_level=None, check_same_thread=False)
    order: list[str] = []
    first.acquire()
    first.execute("BEGIN IMMEDIATE")

    def waiter() -> None:
        second.acquire()
        order.append("second acquired")
        second.execute("BEGIN IMMEDIATE")
        second.commit()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)
    order.append(f"first {finish}")
    getattr(first, finish)()
    thread.join(timeout=5)
    assert not thread.is_alive()
    first.close()
    second.close()
    return order


def test_a_second_writer_waits_for_commit(tmp_path: Path) -> None:
    assert _holder_and_waiter(tmp_path / "db.sqlite", "commit") == ["first commit", "second acquired"]


def test_rollback_and_close_release_the_lock(tmp_path: Path) -> None:
    assert _holder_and_waiter(tmp_path / "db.sqlite", "rollback") == ["first rollback", "second acquired"]
    assert _holder_and_waiter(tmp_path / "other.sqlite", "close") == ["first close", "second acquired"]


def test_engines_on_a_file_take_the_lock_and_writers_never_see_busy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = create_engine_for(url)
    with engine.begin() as conn:
        assert isinstance(conn.connection.driver_connection, GatedConnection)
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    assert lock_path_for(str(tmp_path / "db.sqlite")).stat().st_mode & 0o777 == 0o600
    # busy_timeout 0: without the lock, a writer finding the file locked would fail at once.
    engines = [create_engine_for(url) for _ in range(4)]
    for each in engines:
        event.listen(each, "connect", lambda dbapi, _record: dbapi.execute("PRAGMA busy_timeout=0"))
    errors: list[BaseException] = []

    def add(engine_index: int) -> None:
        try:
            for _ in range(50):
                with engines[engine_index].begin() as conn:
                    value = conn.execute(text("SELECT n FROM counter")).scalar_one()
                    conn.execute(text("UPDATE counter SET n = :n"), {"n": value + 1})
        except BaseException as error:  # reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM counter")).scalar_one() == 200


def test_memory_databases_have_no_lock_file(tmp_path: Path) -> None:
    engine = create_engine_for("sqlite://")
    with engine.begin() as conn:
        assert not isinstance(conn.connection.driver_connection, GatedConnection)


def test_a_nested_transaction_in_one_thread_fails_at_once_instead_of_waiting_for_itself(tmp_path: Path) -> None:
    engine = create_engine_for(f"sqlite:///{tmp_path / 'db.sqlite'}")
    started = time.monotonic()
    with engine.begin() as outer:
        outer.execute(text("CREATE TABLE t (n INTEGER)"))
        with pytest.raises(OperationalError), engine.begin() as inner:
            inner.execute(text("SELECT 1"))
    assert time.monotonic() - started < 2
    with engine.begin() as conn:  # the lock is free again, for this thread and others
        assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 0
