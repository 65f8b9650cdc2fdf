"""One writer at a time on an embedded SQLite file, handed over by the kernel, not by sleeping.

Every vault operation writes (its audit events at least), so on SQLite every transaction is a
writer and they all queue for the one write lock. SQLite makes a writer that finds the lock
taken sleep and retry (1, 2, 5, 10 ... 100 ms): with two server workers that sleep, not the
work, set throughput and p99. Here each connection first takes an exclusive flock(2) on a lock
file beside the database, which the kernel grants the moment the holder releases it, and only
then BEGIN IMMEDIATE; the lock is released after COMMIT or ROLLBACK.

Each connection opens its own file description, so the lock also separates threads of one
process. The wait has no timeout of its own: the holder is a live transaction (no slow client can
hold one: requests reach the app only once complete), and the kernel drops a dead process's lock.
The server has no per-request watchdog, so a transaction that hangs inside the process (a bug)
holds the lock until the process is restarted.
A thread that already holds the lock and opens a second transaction would wait for itself
forever, so that is refused at once instead. Processes that do not take the lock (the sqlite3
shell) still meet SQLite's busy timeout.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

__all__ = ["GatedConnection", "NestedWriter", "lock_path_for"]

_this_thread = threading.local()


def _held_here() -> set[str]:
    """The lock files this thread holds."""
    if not hasattr(_this_thread, "paths"):
        _this_thread.paths = set()
    paths: set[str] = _this_thread.paths
    return paths


class NestedWriter(sqlite3.OperationalError):
    """A second transaction on the same database from a thread already in one."""


def lock_path_for(database: str) -> Path:
    return Path(database + ".writer-lock")


class GatedConnection(sqlite3.Connection):
    """A sqlite3 connection that holds the file's writer lock from `acquire()` to commit or rollback."""

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_path = str(lock_path_for(str(database)))
        self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._held = False

    def acquire(self) -> None:
        if self._held:
            return
        mine = _held_here()
        if self._lock_path in mine:
            raise NestedWriter("this thread is already in a transaction on this database")
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._held = True
        mine.add(self._lock_path)

    def _release(self) -> None:
        if self._held:
            self._held = False
            _held_here().discard(self._lock_path)
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def truncate_wal(self) -> bool:
        """Checkpoint the WAL into the database and cut it to zero bytes; False if a reader kept it.

        Deleted rows are zeroed in the database file (secure_delete), but their old page images
        stay in the WAL until it is rewritten. Holding the writer lock, no other transaction of
        ours is open, so the checkpoint completes at once.
        """
        self.acquire()
        try:
            busy, _frames, _copied = self.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._release()
        return bool(busy == 0)

    def commit(self) -> None:
        super().commit()
        self._release()  # a failed commit keeps the lock until the rollback that follows it

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._lock_fd >= 0:
                self._release()
                os.close(self._lock_fd)
                self._lock_fd = -1
