"""An embedded vault for in-process benchmarks: fresh keys, a migrated database, domain keys ready."""

from __future__ import annotations

import base64
import secrets
import shutil
import tempfile
from pathlib import Path

from api.settings import Settings
from api.wiring import Components, build
from vault.storage.migrate import upgrade


def fresh_postgres(url: str) -> str:
    """A new, empty database next to the one named, so runs never share keys or rows."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from vault.storage.engine import normalise_url

    base = make_url(normalise_url(url))
    name = f"tv_bench_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    admin.dispose()


def fresh_vault(database_url: str | None, prefix: str, **env: str) -> tuple[Components, str]:
    """Components on a new SQLite file (or a new PostgreSQL database next to `database_url`)."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    url = database_url or f"sqlite:///{data_dir / 'bench.db'}"
    if url.startswith("postgres"):
        url = fresh_postgres(url)
    parts = build(Settings.from_env({
        "TOKENVAULT_DATA_DIR": str(data_dir), "TOKENVAULT_DATABASE_URL": url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_LOG_LEVEL": "warning", **env}))
    parts.provider.initialise()
    upgrade(parts.engine)
    with parts.engine.begin() as conn:
        parts.keys.ensure_domain_keys(conn)
    return parts, url


def discard(parts: Components, url: str) -> None:
    """Undo `fresh_vault`: stop the audit thread, close the pool, drop the database, remove the data dir."""
    parts.trail.close()
    parts.engine.dispose()
    if url.startswith("postgres"):
        drop_postgres(url)
    shutil.rmtree(parts.settings.data_dir, ignore_errors=True)
