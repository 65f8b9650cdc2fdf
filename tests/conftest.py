"""Shared fixtures: real databases (SQLite and PostgreSQL), components, the Flask app."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.http.app import create_app
from api.settings import Settings
from api.wiring import Components, build
from tests.support import database

ROLES = ("checkout", "payment_gateway", "shipping", "support")


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return database.sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(scope="session")
def _postgres_url() -> Iterator[str]:
    with database.postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, _sqlite_template: Path) -> Iterator[str]:
    """Every storage test runs on both engines."""
    if request.param == "sqlite":
        yield database.sqlite_copy(_sqlite_template, tmp_path)
        return
    url: str = request.getfixturevalue("_postgres_url")
    database.truncate_all(url)
    yield url


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    return database.sqlite_copy(_sqlite_template, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_settings(data_dir: Path, database_url: str, **extra: str) -> Settings:
    env = {
        "TOKENVAULT_DATA_DIR": str(data_dir),
        "TOKENVAULT_DATABASE_URL": database_url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_LOG_LEVEL": "warning",
        # Tiny argon2 cost: operators' password hashing stays fast in tests (real cost by default).
        "TOKENVAULT_ARGON2_TIME_COST": "1",
        "TOKENVAULT_ARGON2_MEMORY_KIB": "64",
        "TOKENVAULT_ARGON2_PARALLELISM": "1",
        **extra,
    }
    return Settings.from_env(env)


_BUILT: list[Components] = []


@pytest.fixture(autouse=True)
def _close_audit_trails() -> Iterator[None]:
    """Stop every trail a test built: a checkpoint thread left running would write into the next test's database."""
    yield
    while _BUILT:
        parts = _BUILT.pop()
        parts.trail.close()
        parts.engine.dispose()


def make_components(data_dir: Path, database_url: str, clock: Clock | None = None, **extra: str) -> Components:
    settings = make_settings(data_dir, database_url, **extra)
    parts = build(settings, clock=clock)
    _BUILT.append(parts)
    assert hasattr(parts.provider, "initialise")
    parts.provider.initialise()
    with parts.engine.begin() as conn:
        parts.keys.ensure_domain_keys(conn)
    return parts


@pytest.fixture
def components(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[Components]:
    parts = make_components(tmp_path / "data", database_url, clock)
    yield parts
    parts.trail.close()  # else its checkpoint thread reconnects after dispose and holds a connection
    parts.engine.dispose()


@pytest.fixture
def app(components: Components) -> Flask:
    return create_app(parts=components)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api_keys(components: Components) -> dict[str, str]:
    """One API key per default role."""
    return {role: components.clients.create(f"test-{role}", role)[1].expose() for role in ROLES}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
