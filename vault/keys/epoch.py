"""The key epoch: a key job learns when every serving process has let its old keys go.

A rotation or re-key raises a counter in the database (`key_epoch`) in the transaction that
retires the old keys. Every process checks it at most once per `KeyHierarchy.epoch_seconds`
(1 s) before it uses a cached key, and any change drops all its cached keys
(`KeyHierarchy.observe_epoch`). Serving processes also run a heartbeat thread that reads it
twice a second and acknowledges the epoch it has seen in `key_epoch_acks`, one row per process,
under an HMAC by the `row` purpose key (as vault.keys.row_mac, with its own label). A key job
whose old keys are otherwise free then waits only until every process that may hold them
acknowledged, instead of the whole key-cache window (TOKENVAULT_KEY_CACHE_SECONDS, 300 s), which
stays the fallback for a process that stopped reporting (killed, hung, or cut off the database).

What an insider who edits these tables can do: only make the job wait longer. An ack row
edited or forged without the row key fails its MAC, and any such row sends the job to the
fallback window; lowering or raising the counter makes every process drop its caches (any
change does), and a counter below the job's epoch keeps the job waiting. The fast path is
taken only by the process that raised the counter itself (a job resumed elsewhere, whose
epoch would come from an editable row, waits the window). A deleted ack row comes back at the
process's next heartbeat; a process whose row stays deleted still drops its keys within
`epoch_seconds` through its own check (README "Key jobs").
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.errors import DecryptionFailed, IntegrityFailure, VaultError
from vault.keys.hierarchy import EPOCH_NAME, KeyHierarchy, read_epoch
from vault.storage.schema import key_epoch, key_epoch_acks

__all__ = ["KeyEpoch"]

_log = logging.getLogger("tokenvault.keys")


def _now() -> datetime:
    return datetime.now(UTC)


class KeyEpoch:
    """Raises the key epoch (jobs), acknowledges it (serving processes), and says when all did."""

    def __init__(self, engine: Engine, keys: KeyHierarchy, *, clock: Callable[[], datetime] = _now,
                 heartbeat_seconds: float = 2.0, worker: str | None = None) -> None:
        self._engine = engine
        self._keys = keys
        self._clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self.worker = worker or f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(6)}"
        self._acked: tuple[int, float] | None = None  # (epoch, time.monotonic()) of the last ack written
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the acknowledgement's MAC (the `row` purpose key, its own message label) -------------

    @staticmethod
    def _message(worker: str, epoch: int, seen_at: datetime) -> bytes:
        moment = seen_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(["key-epoch-ack/1", worker, epoch, moment], separators=(",", ":")).encode()

    def _seal(self, conn: Connection, worker: str, epoch: int, seen_at: datetime) -> str:
        key_id, key = self._keys.active_hmac_key(conn, "row")
        return f"{key_id}:{hmac.new(key.expose(), self._message(worker, epoch, seen_at), hashlib.sha256).hexdigest()}"

    def _authentic(self, conn: Connection, row: Mapping[str, Any]) -> bool:
        stored = row["row_mac"]
        if not isinstance(stored, str) or stored.count(":") != 1:
            return False
        key_id, mac = stored.split(":")
        try:
            key = self._keys.hmac_key_by_id(conn, key_id, "row")
        except DecryptionFailed:
            return False
        message = self._message(str(row["worker"]), int(row["epoch"]), row["seen_at"])
        return hmac.compare_digest(hmac.new(key.expose(), message, hashlib.sha256).hexdigest(), mac)

    # -- jobs ---------------------------------------------------------------------------------

    def bump(self, conn: Connection) -> int:
        """Raise the epoch in the caller's transaction (the one that retires the keys); returns it."""
        for _ in range(2):
            new = conn.execute(update(key_epoch).where(key_epoch.c.name == EPOCH_NAME)
                               .values(epoch=key_epoch.c.epoch + 1, changed_at=self._clock())
                               .returning(key_epoch.c.epoch)).scalar()
            if new is not None:
                return int(new)
            with contextlib.suppress(SQLAlchemyError), conn.begin_nested():
                conn.execute(insert(key_epoch).values(name=EPOCH_NAME, epoch=0, changed_at=self._clock()))
        raise IntegrityFailure(key_epoch.name)

    def acknowledged(self, conn: Connection, epoch: int, *, since: datetime, seen: set[str]) -> bool:
        """True once every process that reported since `since` acknowledged `epoch` or later.

        `seen` accumulates, across the job's polls, every process that reported since `since`:
        deleting a row after the job saw it does not drop that process from the wait.
        """
        if read_epoch(conn) < epoch:
            return False  # lowered behind the job's back: wait the window
        latest: dict[str, int] = {}
        for row in conn.execute(select(key_epoch_acks)).mappings():
            if not self._authentic(conn, dict(row)):
                return False  # an edited or forged acknowledgement: no fast path
            latest[str(row["worker"])] = int(row["epoch"])
            if row["seen_at"] >= since:
                seen.add(str(row["worker"]))
        return all(latest.get(worker, -1) >= epoch for worker in seen)

    # -- serving processes --------------------------------------------------------------------

    def beat(self) -> int:
        """Read the epoch (dropping cached keys if it changed) and acknowledge it; returns it."""
        read_at = time.monotonic()
        with self._engine.begin() as conn:
            epoch = read_epoch(conn)
            self._keys.observe_epoch(epoch, read_at)
            if self._acked is not None and self._acked[0] == epoch \
                    and time.monotonic() - self._acked[1] < self.heartbeat_seconds:
                return epoch
            seen_at = self._clock()
            values = {"epoch": epoch, "seen_at": seen_at, "row_mac": self._seal(conn, self.worker, epoch, seen_at)}
            # Our own row, whatever it holds now (an insider's edit included), is replaced by the truth.
            written = conn.execute(update(key_epoch_acks).where(key_epoch_acks.c.worker == self.worker)
                                   .values(**values)).rowcount
            if not written:
                conn.execute(insert(key_epoch_acks).values(worker=self.worker, **values))
        self._acked = (epoch, time.monotonic())
        return epoch

    def start(self) -> None:
        """The heartbeat thread (serving processes): twice per `epoch_seconds`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="tokenvault-key-epoch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = max(self._keys.epoch_seconds / 2, 0.05)
        while not self._stopped.is_set():
            try:
                self.beat()
            except (VaultError, SQLAlchemyError) as exc:
                # Requests still confirm the epoch themselves (KeyHierarchy._gate); jobs wait the window.
                _log.warning("key epoch heartbeat failed: %s", type(exc).__name__)
            self._stopped.wait(interval)

    def stop(self, *, forget: bool = True) -> None:
        """Stop the heartbeat; `forget` removes this process's row (a stopped process holds no keys)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if forget:
            with contextlib.suppress(SQLAlchemyError), self._engine.begin() as conn:
                conn.execute(delete(key_epoch_acks).where(key_epoch_acks.c.worker == self.worker))
