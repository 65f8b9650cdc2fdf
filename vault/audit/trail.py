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

import hashlib
import hmac
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.errors import AuditWriteFailed, KeyServiceUnavailable, VaultError
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_archives, audit_events

__all__ = ["AuditEvent", "Origin", "Actor", "AuditTrail", "Verification", "Break", "event_fields"]

GENESIS = bytes(32)
# Built once: the chain head of a writer, found through the (writer, chain_seq) unique index.
_HEAD = (
    select(audit_events.c.chain_seq, audit_events.c.mac)
    .where(audit_events.c.writer == bindparam("writer"))
    .order_by(audit_events.c.chain_seq.desc())
    .limit(1)
)
_WRITER_KEY = "tokenvault_audit_writer"


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
        return {
            "at": self.at, "actor": self.actor, "role": self.role, "action": self.action, "outcome": self.outcome,
            "error_code": self.error_code, "token": self.token, "kind": self.kind, "subject_id": self.subject_id,
            "purpose": self.purpose, "key_id": self.key_id, "detail": _printable(self.detail, 256),
            "request_id": _printable(origin.request_id, 64), "source": _printable(origin.source, 64),
            "user_agent": _printable(origin.user_agent, 256),
        }


# The fields a MAC covers, in a fixed order. Global `seq` is not among them (the
# database assigns it); verification checks it only grows along each chain.
event_fields = (
    "at", "actor", "role", "action", "outcome", "error_code", "token", "kind", "subject_id", "purpose", "key_id",
    "request_id", "source", "user_agent", "detail", "writer", "chain_seq", "mac_key_id",
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _canonical(row: dict[str, Any]) -> bytes:
    values = [(_iso(row[name]) if name == "at" else row.get(name)) for name in event_fields]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac_of(key: bytes, prev_mac: bytes, row: dict[str, Any]) -> bytes:
    return hmac.new(key, prev_mac + _canonical(row), hashlib.sha256).digest()


@dataclass(frozen=True)
class Break:
    """The first place verification failed."""

    reason: str
    writer: str | None = None
    chain_seq: int | None = None
    seq: int | None = None


@dataclass
class Verification:
    events: int = 0
    writers: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    broken: Break | None = None

    @property
    def intact(self) -> bool:
        return self.broken is None

    def public(self) -> dict[str, Any]:
        return {"intact": self.intact, "events": self.events, "writers": self.writers,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "checkpoints": self.checkpoints,
                "broken": asdict(self.broken) if self.broken else None}


def _now() -> datetime:
    return datetime.now(UTC)


class AuditTrail:
    """Appends chained events and verifies them; one per process."""

    def __init__(
        self,
        keys: KeyHierarchy,
        *,
        checkpoint_dir: Path | None = None,
        checkpoint_seconds: float = 10.0,
        clock: Callable[[], datetime] = _now,
        on_write: Callable[[float], None] | None = None,
    ) -> None:
        self._keys = keys
        self._on_write = on_write or (lambda _seconds: None)
        self._clock = clock
        self._checkpoint_dir = checkpoint_dir
        self._checkpoint_seconds = checkpoint_seconds
        self._writers: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._stopped = threading.Event()

    # -- writing -----------------------------------------------------------------------------

    def _writer(self, conn: Connection) -> str:
        """This connection's chain id: host, process and a random part (a restart starts new chains)."""
        info = conn.connection.info
        writer: str | None = info.get(_WRITER_KEY)
        if writer is None:
            writer = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(6)}"
            info[_WRITER_KEY] = writer
        return writer

    def record(self, conn: Connection, events: Sequence[AuditEvent]) -> None:
        """Append events in the caller's transaction; raises AuditWriteFailed on any failure."""
        if not events:
            return
        started = time.perf_counter()
        try:
            key_id, key = self._keys.active_hmac_key(conn, "audit")
            writer = self._writer(conn)
            head = conn.execute(_HEAD, {"writer": writer}).first()
            chain_seq, prev = (int(head[0]), bytes(head[1])) if head else (0, GENESIS)
            rows = []
            for event in events:
                chain_seq += 1
                row = event.row()
                row.update(writer=writer, chain_seq=chain_seq, mac_key_id=key_id, prev_mac=prev)
                row["mac"] = prev = mac_of(key.expose(), prev, row)
                rows.append(row)
            conn.execute(insert(audit_events), rows)
            self._on_write(time.perf_counter() - started)
        except KeyServiceUnavailable:
            raise  # the audit key is out of reach: say so, the trail itself is fine
        except VaultError as exc:
            raise AuditWriteFailed("audit event could not be written") from exc
        except SQLAlchemyError as exc:
            raise AuditWriteFailed("audit event could not be written") from exc
        if self._checkpoint_dir is not None and writer not in self._writers:
            with self._lock:
                self._writers.add(writer)
                self._engine = self._engine or conn.engine
                self._start_checkpointer()

    # -- checkpoints -------------------------------------------------------------------------

    def _start_checkpointer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._checkpoint_loop, name="audit-checkpoints", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the checkpoint thread (before the engine is disposed, so it opens no new connection)."""
        self._stopped.set()

    def _checkpoint_loop(self) -> None:
        while not self._stopped.wait(self._checkpoint_seconds):
            try:
                self.checkpoint()
            except (VaultError, SQLAlchemyError, OSError):
                continue  # the next round tries again; verification reports what is missing

    def checkpoint(self, engine: Engine | None = None, *, all_writers: bool = False) -> int:
        """Append a signed line per chain head to the sink; returns the number of lines.

        Only committed events are read, so a checkpoint never names an event that
        could still roll back.
        """
        engine = engine or self._engine
        if engine is None or self._checkpoint_dir is None:
            return 0
        with engine.connect() as conn:
            heads: list[tuple[str, Any]]
            if all_writers:
                heads = [(row[0], row[1]) for row in conn.execute(
                    select(audit_events.c.writer, func.max(audit_events.c.chain_seq)).group_by(audit_events.c.writer)
                )]
            else:
                with self._lock:
                    writers = sorted(self._writers)
                heads = [(w, conn.execute(select(func.max(audit_events.c.chain_seq))
                                          .where(audit_events.c.writer == w)).scalar()) for w in writers]
            lines = []
            key_id, key = self._keys.active_hmac_key(conn, "audit")
            for writer, chain_seq in heads:
                if chain_seq is None:
                    continue
                mac = conn.execute(select(audit_events.c.mac).where(audit_events.c.writer == writer,
                                                                    audit_events.c.chain_seq == chain_seq)).scalar()
                if mac is None:
                    continue
                body = {"at": _iso(self._clock()), "writer": writer, "chain_seq": int(chain_seq),
                        "mac": bytes(mac).hex(), "key_id": key_id}
                body["sig"] = _sign(key.expose(), body)
                lines.append(json.dumps(body, sort_keys=True))
        if lines:
            self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
            path = self._checkpoint_dir / f"checkpoints-{socket.gethostname()[:30]}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
        return len(lines)

    def _read_checkpoints(self) -> Iterator[dict[str, Any]]:
        if self._checkpoint_dir is None or not self._checkpoint_dir.exists():
            return
        for path in sorted(self._checkpoint_dir.glob("*.jsonl")):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)

    # -- verification ------------------------------------------------------------------------

    def verify(self, conn: Connection) -> Verification:
        """Check every chain link, every MAC, the order, and every checkpoint; stop at the first break."""
        report = Verification()
        starts = {row.writer: (int(row.chain_seq), bytes(row.mac)) for row in conn.execute(select(audit_archives))}
        keys: dict[str, bytes] = {}
        query = select(audit_events).order_by(audit_events.c.writer, audit_events.c.chain_seq)
        writer: str | None = None
        expected, prev, last_seq = 0, GENESIS, 0
        for row in conn.execution_options(yield_per=2000).execute(query).mappings():
            if row["writer"] != writer:
                writer = row["writer"]
                report.writers += 1
                start_seq, prev = starts.get(writer, (0, GENESIS))
                expected, last_seq = start_seq + 1, 0
            report.events += 1
            seq = int(row["seq"])
            report.first_seq = seq if report.first_seq is None else min(report.first_seq, seq)
            report.last_seq = seq if report.last_seq is None else max(report.last_seq, seq)
            chain_seq = int(row["chain_seq"])
            if chain_seq != expected:
                reason = "event missing before this one" if chain_seq > expected else "event inserted"
                report.broken = Break(reason, writer, chain_seq, seq)
                return report
            key_id = row["mac_key_id"]
            if key_id not in keys:
                try:  # a key made for another purpose (e.g. a copied `auth` key) never verifies an event
                    keys[key_id] = self._keys.hmac_key_by_id(conn, key_id, "audit").expose()
                except VaultError:
                    report.broken = Break("event signed with a key that is not an audit key", writer, chain_seq, seq)
                    return report
            if bytes(row["prev_mac"]) != prev:
                report.broken = Break("link to previous event broken", writer, chain_seq, seq)
                return report
            if not hmac.compare_digest(mac_of(keys[key_id], prev, dict(row)), bytes(row["mac"])):
                report.broken = Break("event modified", writer, chain_seq, seq)
                return report
            if seq <= last_seq:
                report.broken = Break("events reordered", writer, chain_seq, seq)
                return report
            prev, expected, last_seq = bytes(row["mac"]), expected + 1, seq
        for checkpoint in self._read_checkpoints():
            report.checkpoints += 1
            broken = self._check_checkpoint(conn, checkpoint, starts, keys)
            if broken is not None:
                report.broken = broken
                return report
        return report

    def _check_checkpoint(self, conn: Connection, checkpoint: dict[str, Any],
                          starts: dict[str, tuple[int, bytes]], keys: dict[str, bytes]) -> Break | None:
        writer, chain_seq = checkpoint.get("writer"), checkpoint.get("chain_seq")
        key_id = str(checkpoint.get("key_id"))
        try:
            key = keys.get(key_id) or self._keys.hmac_key_by_id(conn, key_id, "audit").expose()
        except VaultError:
            return Break("checkpoint signed with an unknown key", writer=writer, chain_seq=chain_seq)
        body = {name: checkpoint.get(name) for name in ("at", "writer", "chain_seq", "mac", "key_id")}
        if not hmac.compare_digest(_sign(key, body), str(checkpoint.get("sig"))):
            return Break("checkpoint signature invalid", writer=writer, chain_seq=chain_seq)
        if writer in starts and int(chain_seq or 0) <= starts[writer][0]:
            return None  # archived; the archive's own MAC covers it
        mac = conn.execute(select(audit_events.c.mac).where(audit_events.c.writer == writer,
                                                            audit_events.c.chain_seq == chain_seq)).scalar()
        if mac is None:
            return Break("events truncated: a checkpointed event is missing", writer=writer, chain_seq=chain_seq)
        if bytes(mac).hex() != checkpoint.get("mac"):
            return Break("checkpointed event modified", writer=writer, chain_seq=chain_seq)
        return None


def _sign(key: bytes, body: dict[str, Any]) -> str:
    payload = json.dumps({k: body[k] for k in sorted(body) if k != "sig"}, sort_keys=True).encode()
    return hmac.new(key, b"checkpoint|" + payload, hashlib.sha256).hexdigest()


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
        "at": _iso(row["at"]).replace("+00:00", "Z"),
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
