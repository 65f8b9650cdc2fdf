"""Erasure epochs: after an erasure and the next epoch, an old copy of the database no longer opens.

A copy taken before the erasure (SQLite files, or pg_dump restored into a new PostgreSQL
database) is opened with the *current* key provider, as an insider with a backup and access
to the provider would: before the epoch it still yields the erased values (the window this
closes), after the epoch it yields nothing, while the live vault keeps every other value.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from api.settings import Settings
from api.wiring import Components, build
from tests.conftest import make_settings
from tests.support.cards import CHECKOUT, HERE, luhn_pan
from tests.support.database import admin_url
from vault.audit.trail import Actor
from vault.errors import Conflict, VaultError
from vault.storage.engine import normalise_url
from vault.storage.schema import domain_keys, key_jobs
from vault.tokens.records import TokenRecord, TokenRequest

ADMIN = Actor(id="admin-1", role="admin")
OFFICER = Actor(id="officer-1", role="privacy_officer")


def _vault(settings: Settings) -> Components:
    parts = build(settings)
    assert hasattr(parts.provider, "initialise")
    parts.provider.initialise()
    with parts.engine.begin() as conn:
        parts.keys.ensure_domain_keys(conn)
    return parts


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, TOKENVAULT_KEY_CACHE_SECONDS="0.2")


def _values(parts: Components, token_list: list[str]) -> dict[str, object]:
    """What a privacy officer reads back; a token that does not open maps to None."""
    try:
        found = parts.tokens.detokenize(OFFICER, token_list, "legal", HERE)
    except VaultError:
        return dict.fromkeys(token_list)
    return {item.token: item.value if item.error is None else None for item in found}


@contextmanager
def _backup(url: str, directory: Path) -> Iterator[str]:
    """A copy of the database as it is now: its SQLite files, or a pg_dump restored elsewhere."""
    if url.startswith("sqlite"):
        source = Path(str(make_url(url).database))
        target = directory / "backup.db"
        for suffix in ("", "-wal"):
            if Path(f"{source}{suffix}").exists():
                shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
        yield f"sqlite:///{target}"
        return
    live = make_url(normalise_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"tv_test_backup_{secrets.token_hex(4)}"
    admin = create_engine(normalise_url(admin_url()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    copy = make_url(live).set(database=name).render_as_string(hide_password=False)
    try:
        dump = directory / "backup.dump"
        subprocess.run(["pg_dump", "-Fc", "-f", str(dump), live], check=True)
        subprocess.run(["pg_restore", "--no-owner", "-d", copy, str(dump)], check=True)
        yield copy
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_erased_values_in_an_old_backup_stop_opening_after_the_epoch(settings: Settings, tmp_path: Path) -> None:
    parts = _vault(settings)
    made = parts.tokens.tokenize(CHECKOUT, [
        TokenRequest(kind="card", value={"pan": luhn_pan(1), "exp_month": 1, "exp_year": 2099}, subject_id="gone"),
        TokenRequest(kind="email", value="gone@example.com", subject_id="gone"),
        TokenRequest(kind="email", value="kept@example.com", subject_id="kept"),
        TokenRequest(kind="card", value={"pan": luhn_pan(2), "exp_month": 2, "exp_year": 2099}),
    ], HERE)
    assert all(isinstance(m, TokenRecord) for m in made)
    erased, kept = [m.token for m in made[:2]], [m.token for m in made[2:]]
    before = _values(parts, erased + kept)
    with _backup(settings.database_url, tmp_path) as copy_url:
        parts.privacy.erase(OFFICER, "gone", HERE)
        copy = _vault(make_settings(settings.data_dir, copy_url, TOKENVAULT_MASTER_KEY=settings.env[
            "TOKENVAULT_MASTER_KEY"]))
        try:
            # The window an epoch closes: the old copy still opens with today's provider.
            assert _values(copy, erased) == {t: before[t] for t in erased}
        finally:
            copy.engine.dispose()

        state = parts.lifecycle.run(parts.lifecycle.start_epoch(ADMIN, HERE), batch=50)
        assert state["status"] == "done" and state["phase"] == "done"

        copy = _vault(make_settings(settings.data_dir, copy_url, TOKENVAULT_MASTER_KEY=settings.env[
            "TOKENVAULT_MASTER_KEY"]))
        try:
            assert _values(copy, erased + kept) == dict.fromkeys(erased + kept)  # nothing in the old copy opens
        finally:
            copy.engine.dispose()
    assert _values(parts, kept) == {t: before[t] for t in kept}  # the live vault lost nothing
    info = parts.provider.info()
    assert sorted(info.versions) == [info.latest_version] == [2]
    parts.engine.dispose()


def test_an_epoch_is_resumable_and_refuses_to_destroy_what_is_still_needed(settings: Settings) -> None:
    parts = _vault(settings)
    parts.tokens.tokenize(CHECKOUT, [TokenRequest(kind="email", value=f"u{i}@example.com", subject_id=f"s{i}")
                                     for i in range(30)], HERE)
    job = parts.lifecycle.start_epoch(ADMIN, HERE)
    with parts.engine.begin() as conn:
        version = conn.execute(select(func.max(domain_keys.c.kek_version))).scalar_one()
        with pytest.raises(Conflict):  # domain keys still under the old version: nothing destroyed
            parts.lifecycle._close_epoch(conn, version)
    assert sorted(parts.provider.info().versions) == [1, 2]
    state = parts.lifecycle.run(job, batch=7)
    assert state["status"] == "done"
    assert parts.lifecycle.run(job)["status"] == "done"  # running it again is harmless
    with parts.engine.connect() as conn:
        assert conn.execute(select(key_jobs.c.kind).where(key_jobs.c.id == job)).scalar_one() == "epoch"
    assert sorted(parts.provider.info().versions) == [2]
    assert not parts.lifecycle.epoch_due(timedelta(days=30))
    parts.engine.dispose()
