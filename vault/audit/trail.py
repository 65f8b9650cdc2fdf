"""The audit trail: every access recorded, chained with a keyed MAC, verifiable.

Events are written with the caller's connection, inside the same transaction as the
operation they describe: if the event cannot be written the operation rolls back
(fail closed). Events hold tokens and ids, never a plaintext value.

Tamper evidence (PCI DSS 10.3): each pooled database connection is a *writer* with
its own chain; an event's MAC covers its fields and the previous event's MAC. A
connection runs one transaction at a time, so a chain needs no lock beyond the
transaction, and writers on many workers and hosts never serialise on one head.
The head is read back from the database, so a rolled-back transaction never leaves
a gap. Signed checkpoints of chain heads go to a separate append-only sink, so
truncating a chain's tail is detected too.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, bindparam, func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.audit.archive import seal_legacy_archives
from vault.audit.chain import GENESIS, MAC_SCHEME, audit_key, event_fields, iso, mac_of
from vault.audit.checkpoints import (
    CheckpointSigner,
    CheckpointSink,
    Entry,
    FileSink,
    Signer,
    SyslogMirror,
    announced_writers,
    entry_lines,
    record_sink_head,
)
from vault.audit.facts import entity_of
from vault.audit.verification import Break, Verification, verify_trail
from vault.errors import AuditWriteFailed, KeyServiceUnavailable, VaultError
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_archives, audit_events, audit_sequence, audit_sink_heads

__all__ = ["AuditEvent", "Origin", "Actor", "AuditTrail", "Verification", "Break", "event_fields", "mac_of",
           "audit_key", "GENESIS", "allocate_seqs"]

# Built once: the chain head of a writer, found through the (writer, chain_seq) unique index.
_HEAD = (
    select(audit_events.c.chain_seq, audit_events.c.mac)
    .where(audit_events.c.writer == bindparam("writer"))
    .order_by(audit_events.c.chain_seq.desc())
    .limit(1)
)
_ARCHIVED_HEAD = (
    select(audit_archives.c.chain_seq, audit_archives.c.mac).where(audit_archives.c.writer == bindparam("writer"))
)
# Built once too (issue #21): building an UPDATE or INSERT per call and computing its cache key cost
# more than SQLite running it. The counter row's new value comes back; the numbers below it are ours.
_NEXT_SEQS = (
    update(audit_sequence).where(audit_sequence.c.name == "audit")
    .values(next_seq=audit_sequence.c.next_seq + bindparam("events", type_=Integer))
    .returning(audit_sequence.c.next_seq)
)
_INSERT_EVENTS = insert(audit_events)
_WRITER_KEY = "tokenvault_audit_writer"
MAX_FAILURE_SOURCES = 10_000
# After this long without a new event, and once a checkpoint found nothing new, the checkpointer
# stops reading the database (a transaction still open this long after its events is not expected).
QUIET_SECONDS = 10.0


@dataclass(frozen=True)
class Origin:
    """Where a request came from (PCI DSS 10.2.2: origination of the event)."""

    request_id: str | None = None
    source: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: a client or an operator, and its role."""

    id: str
    role: str
    name: str = ""


ANONYMOUS = Actor(id="anonymous", role="none")
# The `tokenvault` command run on the host, which holds the database and the master key anyway.
HOST = Actor(id="host", role="system", name="tokenvault CLI")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _printable(text: str | None, limit: int) -> str | None:
    """Client-supplied text (headers) without control characters, cut to its column: the write never fails."""
    return None if text is None else _CONTROL.sub("?", text)[:limit]


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    role: str
    action: str
    outcome: str  # allowed | denied | error
    error_code: str | None = None
    token: str | None = None
    kind: str | None = None
    subject_id: str | None = None
    purpose: str | None = None
    key_id: str | None = None
    detail: str | None = None  # short, non-sensitive: counts, ids, reasons
    origin: Origin = field(default_factory=Origin)

    def row(self) -> dict[str, Any]:
        origin = self.origin
        detail = _printable(self.detail, 256)
        return {
            "at": self.at, "actor": self.actor, "role": self.role, "action": self.action, "outcome": self.outcome,
            "error_code": self.error_code, "token": self.token, "kind": self.kind, "subject_id": self.subject_id,
            "purpose": self.purpose, "key_id": self.key_id, "detail": detail,
            "entity": entity_of(self.action, self.outcome, self.actor, self.subject_id, detail),
            "request_id": _printable(origin.request_id, 64), "source": _printable(origin.source, 64),
            "user_agent": _printable(origin.user_agent, 256),
        }


def allocate_seqs(conn: Connection, count: int) -> list[int]:
    """`count` new global sequence numbers, never handed out before, in increasing order.

    PostgreSQL: the column's own sequence (no lock, never rolled back). SQLite: a counter
    row, under the single-writer lock every SQLite transaction holds anyway.
    """
    if conn.dialect.name == "postgresql":
        rows = conn.execute(text("SELECT nextval(pg_get_serial_sequence('audit_events', 'seq')) "
                                 "FROM generate_series(1, :n)"), {"n": count})
        return sorted(int(row[0]) for row in rows)
    top = conn.execute(_NEXT_SEQS, {"events": count}).scalar()
    if top is None:  # a database created without the migration's backfill
        start = int(conn.execute(select(func.coalesce(func.max(audit_events.c.seq), 0))).scalar_one()) + 1
        conn.execute(insert(audit_sequence).values(name="audit", next_seq=start + count))
        top = start + count
    return list(range(int(top) - count, int(top)))


def _now() -> datetime:
    return datetime.now(UTC)


class AuditTrail:
    """Appends chained events, anchors them outside the database, verifies them; one per process."""

    def __init__(
        self,
        keys: KeyHierarchy,
        *,
        checkpoint_dir: Path | None = None,
        sinks: Sequence[CheckpointSink] = (),
        mirrors: Sequence[SyslogMirror] = (),
        signer: Signer | None = None,
        checkpoint_seconds: float = 1.0,
        checkpoint_events: int = 1000,
        clock: Callable[[], datetime] = _now,
        on_write: Callable[[float], None] | None = None,
    ) -> None:
        self._keys = keys
        self._on_write = on_write or (lambda _seconds: None)
        self._clock = clock
        self._sinks: list[CheckpointSink] = [*([FileSink(checkpoint_dir)] if checkpoint_dir is not None else []),
                                             *sinks]
        self._mirrors = list(mirrors)
        self.signer: Signer = signer or CheckpointSigner(keys.provider)
        self._checkpoint_seconds = checkpoint_seconds
        self._checkpoint_events = checkpoint_events
        self._announced: set[str] = set()
        self._anchored: dict[str, int] = {}  # writer -> chain_seq last written to the sink
        self._pending = 0  # events recorded since the last checkpoint
        self._last_record = time.monotonic()  # when record() last ran (its transaction may commit later)
        self._caught_up = False  # the last checkpoint found nothing new, after the last record()
        self._sink_heads: dict[str, tuple[int, str]] = {}  # announce entries not yet recorded in the database
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._stopped = threading.Event()
        self._wake = threading.Event()
        # Failed authentications, counted per (source, reason, detail) and written as one event each
        # per window: unauthenticated traffic cannot inflate the trail or queue for its writes.
        self._failures: dict[tuple[str | None, str, str | None], int] = {}
        self._failures_since = time.monotonic()
        self.failure_window_seconds = 60.0

    @property
    def keys(self) -> KeyHierarchy:
        return self._keys

    @property
    def sinks(self) -> list[CheckpointSink]:
        return list(self._sinks)

    def _append(self, entries: Sequence[Entry], *, every_sink: bool) -> dict[str, tuple[int, str]]:
        """Append to each sink; `every_sink` (announcements) fails if any sink fails, else best effort."""
        written: dict[str, tuple[int, str]] = {}
        failure: Exception | None = None
        at = self._clock()
        made: list[str] = []

        def lines(n: int, prev: str) -> list[str]:
            new = entry_lines(entries, self.signer, at, n, prev)
            if not made:  # the first sink's numbering goes to the mirrors
                made[:] = new
            return new

        for sink in self._sinks:
            try:
                written[sink.name] = sink.append(lines)
            except (OSError, VaultError) as exc:
                if every_sink:
                    raise
                failure = exc
        if failure is not None and not written:
            raise failure
        for mirror in self._mirrors:  # the lines as the first sink numbered them
            try:
                mirror.send(made, at)
            except OSError:
                if every_sink:
                    raise
        return written

    # -- writing -----------------------------------------------------------------------------

    def _writer(self, conn: Connection) -> str:
        """This connection's chain id: host, process and a random part (a restart starts new chains)."""
        info = conn.connection.info
        writer: str | None = info.get(_WRITER_KEY)
        if writer is None:
            writer = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(6)}"
            info[_WRITER_KEY] = writer
        return writer

    def _announce(self, conn: Connection, writer: str) -> None:
        """Tell the sink about a new chain before its first event: deleting it whole is then visible."""
        if not self._sinks or writer in self._announced:
            return
        self.signer.prepare(conn)
        written = self._append([Entry("announce", writer)], every_sink=True)
        with self._lock:
            self._announced.add(writer)
            self._anchored.setdefault(writer, 0)
            # Recorded in the database by the checkpointer, in its own transaction: updating that
            # one row here would hold its lock for the caller's whole transaction (and deadlock).
            for name, head in written.items():
                self._sink_heads[name] = max(self._sink_heads.get(name, head), head)

    def record(self, conn: Connection, events: Sequence[AuditEvent]) -> None:
        """Append events in the caller's transaction; raises AuditWriteFailed on any failure."""
        if not events:
            return
        started = time.perf_counter()
        try:
            key_id, key = self._keys.active_hmac_key(conn, "audit")
            writer = self._writer(conn)
            self._announce(conn, writer)
            head = conn.execute(_HEAD, {"writer": writer}).first()
            if head is None:  # a chain archived whole while this process serves continues after the archive
                head = conn.execute(_ARCHIVED_HEAD, {"writer": writer}).first()
            chain_seq, prev = (int(head[0]), bytes(head[1])) if head else (0, GENESIS)
            rows = []
            for event, seq in zip(events, allocate_seqs(conn, len(events)), strict=True):
                chain_seq += 1
                row = event.row()
                row.update(seq=seq, writer=writer, chain_seq=chain_seq, mac_key_id=key_id, prev_mac=prev,
                           mac_scheme=MAC_SCHEME)
                row["mac"] = prev = mac_of(key.expose(), prev, row)
                rows.append(row)
            conn.execute(_INSERT_EVENTS, rows)
            self._on_write(time.perf_counter() - started)
        except KeyServiceUnavailable:
            raise  # the audit key is out of reach: say so, the trail itself is fine
        except (VaultError, SQLAlchemyError, OSError) as exc:
            raise AuditWriteFailed("audit event could not be written") from exc
        if self._sinks:
            with self._lock:
                self._engine = self._engine or conn.engine
                self._pending += len(events)
                self._last_record = time.monotonic()
                self._caught_up = False
                if self._pending >= self._checkpoint_events:
                    self._wake.set()
                self._start_checkpointer()

    # -- failed authentications -------------------------------------------------------------

    def note_failed_authentication(self, engine: Engine, origin: Origin, error_code: str,
                                   detail: str | None = None) -> None:
        """Count a failed authentication; `flush_failures` writes one event per source and window."""
        with self._lock:
            self._engine = self._engine or engine
            key = (origin.source, error_code, detail)
            if key not in self._failures and len(self._failures) >= MAX_FAILURE_SOURCES:
                key = ("(other sources)", error_code, detail)  # bounded memory, whatever the addresses
            self._failures[key] = self._failures.get(key, 0) + 1
            self._start_checkpointer()

    def flush_failures(self, *, force: bool = False) -> int:
        """Write the counted failures (one event per source, reason and window, with `count=`)."""
        with self._lock:
            window = time.monotonic() - self._failures_since
            if not self._failures or (not force and window < self.failure_window_seconds):
                return 0
            counted, self._failures = self._failures, {}
            self._failures_since = time.monotonic()
            engine = self._engine
        if engine is None:
            return 0
        now = self._clock()
        events = [AuditEvent(at=now, actor=ANONYMOUS.id, role=ANONYMOUS.role, action="authenticate",
                             outcome="denied", error_code=code, origin=Origin(source=source),
                             detail=f"count={count} window={int(window)}s" + (f" {detail}" if detail else ""))
                  for (source, code, detail), count in sorted(counted.items(), key=str)]
        with engine.begin() as conn:
            self.record(conn, events)
        return len(events)

    # -- checkpoints -------------------------------------------------------------------------

    def _start_checkpointer(self) -> None:
        if self._stopped.is_set():
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._checkpoint_loop, name="audit-checkpoints", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the checkpoint thread and anchor this process's chains one last time (graceful stop).

        Called before the engine is disposed, by the CLI after every command and by the
        server at exit: a short-lived writer leaves no un-anchored event behind.
        """
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with contextlib.suppress(VaultError, SQLAlchemyError, OSError):
            self.flush_failures(force=True)
        with contextlib.suppress(VaultError, SQLAlchemyError, OSError):
            self.checkpoint()

    def _checkpoint_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self._checkpoint_seconds)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.flush_failures()
                self.checkpoint()
            except (VaultError, SQLAlchemyError, OSError):
                continue  # the next round tries again; verification reports the un-anchored tail

    def _heads(self, conn: Connection, writers: Sequence[str]) -> list[tuple[str, int, bytes]]:
        heads = []
        for writer in writers:
            head = conn.execute(_HEAD, {"writer": writer}).first() or conn.execute(
                _ARCHIVED_HEAD, {"writer": writer}).first()
            if head is not None:
                heads.append((writer, int(head[0]), bytes(head[1])))
        return heads

    def checkpoint(self, engine: Engine | None = None, *, all_writers: bool = False) -> int:
        """Append a signed head entry per chain that moved since its last one; returns their number.

        Only committed events are read, so a checkpoint never names an event that could still
        roll back. `all_writers` anchors every chain the sink already announced (for a cron
        job); a chain the sink never announced is never anchored after the fact.
        """
        engine = engine or self._engine
        if engine is None or not self._sinks:
            return 0
        with self._lock:
            quiet = (not all_writers and not self._sink_heads and self._caught_up
                     and time.monotonic() - self._last_record > QUIET_SECONDS)
            if quiet:  # an idle worker does not touch the database every second
                return 0
            pending, self._pending = self._pending, 0
            announced_heads, self._sink_heads = self._sink_heads, {}
            started = time.monotonic()
        try:
            return self._checkpoint(engine, all_writers, announced_heads, started)
        except BaseException:
            with self._lock:
                self._pending += pending
                for name, head in announced_heads.items():
                    self._sink_heads[name] = max(self._sink_heads.get(name, head), head)
            raise

    def _checkpoint(self, engine: Engine, all_writers: bool, announced_heads: dict[str, tuple[int, str]],
                    started: float) -> int:
        if announced_heads:
            with engine.begin() as conn:
                for name, (n, digest) in announced_heads.items():
                    record_sink_head(conn, name, n, digest, self._clock())
        with engine.connect() as conn:
            if all_writers:
                writers = sorted(announced_writers(self._sinks, self.signer.public_keys(conn)))
            else:
                with self._lock:
                    writers = sorted(self._announced)
            heads = [h for h in self._heads(conn, writers) if h[1] > self._anchored.get(h[0], 0)]
            if heads:
                self.signer.prepare(conn)
            conn.rollback()
        if not heads:
            with self._lock:  # caught up with every event recorded before this read began
                self._caught_up = self._last_record < started
            return 0
        written = self._append([Entry("head", w, seq, mac.hex()) for w, seq, mac in heads], every_sink=False)
        with self._lock:
            for writer, chain_seq, _mac in heads:
                self._anchored[writer] = max(self._anchored.get(writer, 0), chain_seq)
        with engine.begin() as conn:
            for name, (n, digest) in written.items():
                record_sink_head(conn, name, n, digest, self._clock())
        return len(heads)

    def adopt(self, engine: Engine) -> int:
        """Announce and anchor chains written before the sink existed (`tokenvault init` after an upgrade).

        This trusts the database as it stands at that moment, once: only while no sink was ever
        recorded in the database (the upgrade from before 0016a). Afterwards a chain the sink never
        announced is reported as forged. Also seals archive records from before 0016a.
        """
        if not self._sinks:
            return 0
        with engine.begin() as conn:
            seal_legacy_archives(self._keys, conn)
            anchored_before = conn.execute(select(func.count()).select_from(audit_sink_heads)).scalar_one()
        if anchored_before:
            # Chains were anchored already: one missing from the log now is a finding for `verify`,
            # never something to anchor after the fact (that would launder a deleted log).
            return 0
        with engine.begin() as conn:
            self.signer.prepare(conn)
            known = announced_writers(self._sinks, self.signer.public_keys(conn))
            in_db = {str(w) for (w,) in conn.execute(select(audit_events.c.writer).distinct())}
            in_db |= {str(w) for (w,) in conn.execute(select(audit_archives.c.writer))}
        new = sorted(in_db - known)
        if not new:
            return 0
        with engine.connect() as conn:
            heads = self._heads(conn, new)
            conn.rollback()
        entries = [Entry("announce", w) for w in new] + [Entry("head", w, s, m.hex()) for w, s, m in heads]
        written = self._append(entries, every_sink=True)
        with engine.begin() as conn:
            for name, (n, digest) in written.items():
                record_sink_head(conn, name, n, digest, self._clock())
        return len(new)

    # -- verification ------------------------------------------------------------------------

    def verify(self, conn: Connection, progress: Callable[[int, int], None] | None = None,
               resume: dict[str, tuple[int, str]] | None = None) -> Verification:
        """Check every chain, archive record and checkpoint; stop at the first break (see verification).

        On PostgreSQL the whole check reads one snapshot (REPEATABLE READ), so an archive or a
        checkpoint committed meanwhile cannot look like a gap.
        """
        if conn.dialect.name == "postgresql" and not conn.in_transaction():
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        return verify_trail(self._keys, conn, self._sinks, self.signer, self._clock(), progress=progress,
                            resume=resume)


@dataclass(frozen=True)
class EventQuery:
    """Filters for reading the trail; all optional, combined with AND."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    token: str | None = None
    subject_id: str | None = None
    after_seq: int = 0
    limit: int = 100


def event_json(row: Any) -> dict[str, Any]:
    """An event as auditors and SIEMs see it (PCI DSS 10.2.2 fields, plus its chain link)."""
    return {
        "seq": int(row["seq"]),
        "at": iso(row["at"]).replace("+00:00", "Z"),
        "actor": row["actor"],
        "role": row["role"],
        "action": row["action"],
        "outcome": row["outcome"],
        "error_code": row["error_code"],
        "purpose": row["purpose"],
        "origin": {"request_id": row["request_id"], "source": row["source"], "user_agent": row["user_agent"]},
        "resource": {"token": row["token"], "kind": row["kind"], "subject_id": row["subject_id"],
                     "key_id": row["key_id"]},
        "detail": row["detail"],
        "chain": {"writer": row["writer"], "chain_seq": int(row["chain_seq"]), "mac": bytes(row["mac"]).hex()},
    }


def select_events(query: EventQuery) -> Any:
    """The SELECT for a query, ordered by global sequence (cursor = last seq seen)."""
    c = audit_events.c
    stmt = select(audit_events).where(c.seq > query.after_seq)
    for column, value in ((c.actor, query.actor), (c.action, query.action), (c.outcome, query.outcome),
                          (c.token, query.token), (c.subject_id, query.subject_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.since is not None:
        stmt = stmt.where(c.at >= query.since)
    if query.until is not None:
        stmt = stmt.where(c.at < query.until)
    return stmt.order_by(c.seq).limit(query.limit)
