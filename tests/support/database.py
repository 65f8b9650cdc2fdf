"""Real databases for tests: a migrated SQLite file and a fresh PostgreSQL database.

PostgreSQL comes from TOKENVAULT_TEST_DATABASE_URL (CI sets it, and then an
unreachable server fails the run) or, on a developer machine, from the default
local server; if that is absent the PostgreSQL variants skip with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

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
    engine = create_engine_for(url)
    names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
