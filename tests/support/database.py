"""Real databases for tests: a migrated SQLite file and a fresh PostgreSQL database.

PostgreSQL comes from TOKENVAULT_TEST_DATABASE_URL (CI sets it, and then an
unreachable server fails the run) or, on a developer machine, from the default
local server; if that is absent the PostgreSQL variants skip with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from vault.storage.engine import create_engine_for, normalise_url
from vault.storage.migrate import upgrade
from vault.storage.schema import metadata

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def required() -> bool:
    return bool(os.environ.get("TOKENVAULT_REQUIRE_SERVICES") or os.environ.get("TOKENVAULT_TEST_DATABASE_URL"))


def admin_url() -> str:
    return os.environ.get("TOKENVAULT_TEST_DATABASE_URL") or DEFAULT_PG


@contextmanager
def postgres_database() -> Iterator[str]:
    """Create a uniquely named, migrated PostgreSQL database and drop it afterwards."""
    base = make_url(normalise_url(admin_url()))
    admin = create_engine(base, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"tv_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        reason = f"PostgreSQL not reachable at {base.render_as_string(hide_password=True)} ({type(exc).__name__})"
        if required():
            pytest.fail(reason + "; TOKENVAULT_TEST_DATABASE_URL/TOKENVAULT_REQUIRE_SERVICES make it mandatory")
        pytest.skip(reason)
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = create_engine_for(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sqlite_template(directory: Path) -> Path:
    """A migrated SQLite file to copy for each test (migrating once is much faster)."""
    path = directory / "template.db"
    engine = create_engine_for(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def sqlite_copy(template: Path, directory: Path) -> str:
    target = directory / "tokenvault.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def truncate_all(url: str) -> None:
    """Empty every table. A previous test's background thread (an audit checkpoint, say) may still be
    finishing a transaction on these tables: PostgreSQL may then pick the TRUNCATE as a deadlock victim,
    so it is tried again."""
    engine = create_engine_for(url)
    names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    try:
        for attempt in range(5):
            try:
                with engine.begin() as conn:
                    conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
                return
            except OperationalError:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
    finally:
        engine.dispose()
