"""Engines for the schema's databases: URL normalising, SQLite setup (WAL, writer lock), pooled
PostgreSQL connections, and cutting deleted rows' leftover copies.

SQLite (WAL) is the embedded default; PostgreSQL is production.
"""

from __future__ import annotations

import select
import sqlite3
import time
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, OperationalError

from vault.storage.writer_lock import GatedConnection, NestedWriter

__all__ = ["create_engine_for", "create_snapshot_reader", "drop_deleted_copies", "normalise_url", "vacuum_deleted"]


def normalise_url(url: str) -> str:
    """Let users write plain `postgresql://`; we ship psycopg 3, so say so to SQLAlchemy."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, foreign keys, and BEGIN IMMEDIATE so concurrent writers queue instead of failing."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        driver = conn.connection.driver_connection
        if isinstance(driver, GatedConnection):
            try:
                driver.acquire()
            except NestedWriter as exc:  # raised here, SQLAlchemy would not wrap it: callers expect its errors
                raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_snapshot_reader(url: str) -> Engine | None:
    """An engine for long reads of one consistent snapshot that hold up no writer; None on SQLite.

    PostgreSQL: REPEATABLE READ, one snapshot for the whole transaction, no locks. SQLite gets
    none on purpose: a WAL reader that skipped the writer lock would keep `drop_deleted_copies`
    from truncating the WAL for as long as it reads, leaving a read CVV's old page on disk; there
    long reads take the writer lock like every transaction (writes wait meanwhile).
    """
    url = normalise_url(url)
    if url.startswith("sqlite"):
        return None
    return create_engine(url, pool_size=1, max_overflow=1, hide_parameters=True,
                         isolation_level="REPEATABLE READ", connect_args={"connect_timeout": 5})


def drop_deleted_copies(engine: Engine) -> bool:
    """After deleting what must not outlive its DELETE (a read CVV), remove the engine's old copies.

    SQLite: checkpoint and truncate the WAL, which still holds the deleted rows' old pages.
    PostgreSQL keeps them in dead tuples and WAL segments until VACUUM and recycling, which this
    cannot force per request (a residual risk in threat_model/README.md). True when done.
    """
    if engine.dialect.name != "sqlite":
        return False
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        return isinstance(driver, GatedConnection) and driver.truncate_wal()
    except sqlite3.Error:
        return False  # the rows are deleted; the next truncation removes these copies too
    finally:
        raw.close()


def vacuum_deleted(engine: Engine) -> None:
    """Reclaim what the vault deleted: PostgreSQL VACUUM of the tables that hold keys and records.

    SQLite already zeroes deleted rows (secure_delete); its WAL copies go with the checkpoint.
    Hygiene, not the guarantee: WAL archives and backups keep their copies, which only the
    destroyed KEK versions of an erasure epoch make unreadable.
    """
    if engine.dialect.name != "postgresql":
        drop_deleted_copies(engine)
        return
    names = ("tokens", "data_keys", "domain_keys", "retained_records", "subjects")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM " + ", ".join(names))


def create_engine_for(url: str, *, pool_size: int = 5, statement_timeout_ms: int = 5000) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        connect_args: dict[str, Any] = {"timeout": 10, "check_same_thread": False}
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            connect_args["factory"] = GatedConnection
        engine = create_engine(url, hide_parameters=True, connect_args=connect_args)
        _sqlite_setup(engine)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        hide_parameters=True,
        pool_timeout=5,
        connect_args={"options": f"-c statement_timeout={statement_timeout_ms}", "connect_timeout": 5},
    )
    _ping_after_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


PING_AFTER_IDLE_SECONDS = 1.0


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Check a pooled connection before use without a round trip; ping it only if it sat idle.

    `pool_pre_ping` costs a round trip per request. An idle connection has nothing to read, so
    a socket that is readable at checkout means the server spoke first: a backend terminated
    (database restart, `pg_terminate_backend`, failover) sends its FATAL notice and closes.
    One `select()` call sees that and the connection is replaced before the request uses it
    (CI saw a request 20 ms after a database came back get 503 from a connection returned
    just before the outage). One idle longer than `idle_seconds` is also pinged (a proxy may
    drop it silently). A connection that dies mid-use still fails that request (503), and
    SQLAlchemy then discards the whole pool.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _lent(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None:
            return  # just connected
        try:
            spoke_first = bool(select.select([dbapi_connection.fileno()], [], [], 0)[0])
        except (OSError, ValueError) as exc:  # closed already: no descriptor
            raise DisconnectionError("pooled connection is closed") from exc
        if spoke_first:
            raise DisconnectionError("the server closed this connection while it was idle")
        if time.monotonic() - returned < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the driver's own error types: any failure means "replace it"
            raise DisconnectionError("idle connection is gone") from exc
