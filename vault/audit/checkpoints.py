"""Checkpoints of the audit chains, outside the database: what makes deletion visible.

A MAC proves an event's content, not its existence. Each writer therefore *announces*
itself to a checkpoint sink before its first event, and the *head* of its chain
(chain_seq and MAC) is written to the sink after its events commit. An insider who edits
the database cannot take back what the sink holds: a chain the sink announced but the
database lacks, or a head the database no longer reaches, is a deletion.

The checkpoint log itself is an append-only sequence of entries, each holding the SHA-256
of the previous line (`prev`) and its number (`n`), signed with an ed25519 key whose seed
is sealed by the key provider (the master key with the local provider, the Transit KEK
with Vault): the database holds only the sealed seed, so an insider can neither sign an
entry nor rewrite the log without breaking its chain. The database keeps, per sink, the
number and hash of the last entry it saw written (`audit_sink_heads`), so a log deleted,
truncated or restored from an older copy no longer reaches it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from vault.errors import DecryptionFailed
from vault.keys.provider import KeyProvider
from vault.storage.schema import audit_signing_keys, audit_sink_heads, insert_ignoring_conflict

__all__ = ["Signer", "CheckpointSigner", "UpgradedSigner", "CheckpointSink", "FileSink", "SinkLog", "Entry",
           "ZERO_HASH", "line_hash", "entry_lines", "last_of"]

ZERO_HASH = "0" * 64
SIGNING_KEY_ID = "checkpoint-ed25519-1"
# The fields of an entry, besides its signature. `kind` is "announce" or "head".
ENTRY_FIELDS = ("n", "prev", "at", "kind", "writer", "chain_seq", "mac", "key")


def line_hash(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


def _payload(entry: dict[str, Any]) -> bytes:
    return json.dumps([entry.get(name) for name in ENTRY_FIELDS], separators=(",", ":")).encode("utf-8")


class Signer(Protocol):
    """Signs checkpoint entries with ed25519; verifiers need only the public keys.

    `key_id` is written in each entry (`key`), so a verifier picks the right public key even
    after the signing key was rotated. Implementations: `CheckpointSigner` below (a seed sealed
    by the key provider) and kms.transit_signing.TransitSigner (a non-exportable Transit key).
    """

    @property
    def key_id(self) -> str: ...

    def prepare(self, conn: Connection) -> None:
        """Make signing possible (open or create the key), before any sink lock is taken."""
        ...

    def sign(self, payload: bytes) -> str:
        """The hex ed25519 signature of `payload`."""
        ...

    def public_keys(self, conn: Connection) -> dict[str, Ed25519PublicKey]: ...


class CheckpointSigner:
    """ed25519 over checkpoint entries; the seed is stored only sealed by the key provider."""

    def __init__(self, provider: KeyProvider) -> None:
        self._provider = provider
        self._private: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return SIGNING_KEY_ID

    def _load(self, conn: Connection, create: bool) -> Ed25519PrivateKey | None:
        if self._private is not None:
            return self._private
        wrapped = conn.execute(select(audit_signing_keys.c.wrapped)
                               .where(audit_signing_keys.c.id == SIGNING_KEY_ID)).scalar()
        if wrapped is None:
            if not create:
                return None
            _seed, sealed = self._provider.generate()
            conn.execute(insert_ignoring_conflict(conn, audit_signing_keys),
                         [{"id": SIGNING_KEY_ID, "wrapped": sealed, "created_at": datetime.now(UTC)}])
            wrapped = conn.execute(select(audit_signing_keys.c.wrapped)
                                   .where(audit_signing_keys.c.id == SIGNING_KEY_ID)).scalar()
        opened = self._provider.unwrap([str(wrapped)])[0]
        if opened is None:
            raise DecryptionFailed()
        with self._lock:
            self._private = Ed25519PrivateKey.from_private_bytes(opened.expose())
        return self._private

    def prepare(self, conn: Connection) -> None:
        self._load(conn, create=True)

    def sign(self, payload: bytes) -> str:
        if self._private is None:
            raise DecryptionFailed()
        return self._private.sign(payload).hex()

    def public_keys(self, conn: Connection) -> dict[str, Ed25519PublicKey]:
        private = self._load(conn, create=False)
        return {SIGNING_KEY_ID: private.public_key()} if private is not None else {}


class UpgradedSigner:
    """Signs with `current` (a Transit key); also verifies what the sealed key signed before the upgrade.

    A vault that ran with the sealed seed before Transit signing became the default keeps that
    seed's row: its old entries still verify. `read_log` refuses a sealed-key entry after the first
    Transit-signed one, so a host that can still unseal the seed cannot append forged entries.
    """

    def __init__(self, current: Signer, legacy: CheckpointSigner) -> None:
        self._current = current
        self._legacy = legacy

    @property
    def key_id(self) -> str:
        return self._current.key_id

    def prepare(self, conn: Connection) -> None:
        self._current.prepare(conn)

    def sign(self, payload: bytes) -> str:
        return self._current.sign(payload)

    def public_keys(self, conn: Connection) -> dict[str, Ed25519PublicKey]:
        return {**self._legacy.public_keys(conn), **self._current.public_keys(conn)}


def signature_valid(publics: Mapping[str, Ed25519PublicKey], entry: dict[str, Any]) -> bool:
    public = publics.get(str(entry.get("key")))
    if public is None:
        return False
    try:
        public.verify(bytes.fromhex(str(entry.get("sig"))), _payload(entry))
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """What a writer asks the sink to record; the sink adds n, prev, at, key and sig."""

    kind: str
    writer: str
    chain_seq: int = 0
    mac: str | None = None


class CheckpointSink(Protocol):
    """An append-only, chained log of checkpoint entries outside the database.

    The sink only stores lines: `append` hands `lines(n, prev)` the number and hash of its last
    entry (under the sink's own lock or check-and-set), stores what it returns and answers the
    new last number and hash. The trail builds, signs and chains the lines (`entry_lines`).
    """

    name: str

    def append(self, lines: Callable[[int, str], list[str]]) -> tuple[int, str]: ...

    def logs(self) -> dict[str, list[str]]:
        """Every log this sink can read (one per host), as raw lines."""
        ...


def entry_lines(entries: Sequence[Entry], signer: Signer, at: datetime, n: int, prev: str) -> list[str]:
    """Signed, numbered, hash-chained lines for `entries`, following entry `n` whose hash is `prev`."""
    lines = []
    for item in entries:
        n += 1
        entry: dict[str, Any] = {"n": n, "prev": prev, "at": at.astimezone(UTC).isoformat(), "kind": item.kind,
                                 "writer": item.writer, "chain_seq": item.chain_seq, "mac": item.mac,
                                 "key": signer.key_id}
        entry["sig"] = signer.sign(_payload(entry))
        line = json.dumps(entry, sort_keys=True, separators=(",", ":"))
        lines.append(line)
        prev = line_hash(line)
    return lines


def last_of(lines: Sequence[str]) -> tuple[int, str]:
    """The number and hash of the last line (0 and the zero hash for an empty log)."""
    return (int(json.loads(lines[-1])["n"]), line_hash(lines[-1])) if lines else (0, ZERO_HASH)


class FileSink:
    """One append-only JSONL file per host, shared by that host's processes under flock(2).

    The default directory sits beside the data directory, not in it (see README): put it on
    another filesystem or host the database administrator cannot write.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._host = socket.gethostname()[:30]
        self.name = f"file:{self._host}"

    def _path(self, host: str) -> Path:
        return self._dir / f"checkpoints-{host}.jsonl"

    @staticmethod
    def _last_line(fd: int) -> str | None:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0:
            return None
        chunk = 4096
        while True:
            start = max(0, size - chunk)
            data = os.pread(fd, size - start, start)
            lines = data.rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or start == 0:
                return lines[-1].decode("utf-8")
            chunk *= 4

    def append(self, lines: Callable[[int, str], list[str]]) -> tuple[int, str]:
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(self._host), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = self._last_line(fd)
            new = lines(*last_of([last] if last else []))
            os.write(fd, "".join(line + "\n" for line in new).encode("utf-8"))
            os.fsync(fd)
            return last_of(new)
        finally:
            os.close(fd)  # releases the flock

    def logs(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        if not self._dir.exists():
            return found
        for path in sorted(self._dir.glob("checkpoints-*.jsonl")):
            host = path.name[len("checkpoints-"):-len(".jsonl")]
            with path.open(encoding="utf-8") as handle:
                found[f"file:{host}"] = [line.rstrip("\n") for line in handle if line.strip()]
        return found


def record_sink_head(conn: Connection, sink: str, n: int, digest: str, at: datetime) -> None:
    """Remember the last entry written to `sink`; only ever forward (several processes race here)."""
    moved = conn.execute(update(audit_sink_heads)
                         .where(audit_sink_heads.c.sink == sink, audit_sink_heads.c.n < n)
                         .values(n=n, hash=digest, at=at)).rowcount
    if not moved:
        conn.execute(insert_ignoring_conflict(conn, audit_sink_heads), [{"sink": sink, "n": n, "hash": digest,
                                                                          "at": at}])


@dataclass
class SinkLog:
    """A sink's log, checked: its entries if the chain and signatures hold, else the first problem."""

    name: str
    entries: list[dict[str, Any]]
    hashes: list[str]
    problem: str | None = None


def read_log(name: str, lines: list[str], publics: Mapping[str, Ed25519PublicKey]) -> SinkLog:
    log = SinkLog(name, [], [])
    prev = ZERO_HASH
    transit_seen = False  # no way back: after a Transit-signed entry the sealed seed signs nothing
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            log.problem = f"checkpoint log {name} modified at entry {number}"
            return log
        if not isinstance(entry, dict) or entry.get("n") != number or entry.get("prev") != prev:
            log.problem = f"checkpoint log {name} modified at entry {number}"
            return log
        if not signature_valid(publics, entry):
            log.problem = f"checkpoint log {name}: signature invalid at entry {number}"
            return log
        if entry.get("key") == SIGNING_KEY_ID and transit_seen:
            log.problem = f"checkpoint log {name}: entry {number} signed with the sealed key after Transit signing"
            return log
        transit_seen = transit_seen or str(entry.get("key")).startswith("transit:")
        prev = line_hash(line)
        log.entries.append(entry)
        log.hashes.append(prev)
    return log


def sink_heads(conn: Connection) -> Iterator[tuple[str, int, str]]:
    for row in conn.execute(select(audit_sink_heads.c.sink, audit_sink_heads.c.n, audit_sink_heads.c.hash)):
        yield str(row[0]), int(row[1]), str(row[2])



def announced_writers(sinks: Sequence[CheckpointSink], publics: Mapping[str, Ed25519PublicKey]) -> set[str]:
    """Writers announced in the sinks' authentic entries (a broken log contributes its valid prefix)."""
    writers: set[str] = set()
    for sink in sinks:
        for name, lines in sink.logs().items():
            writers |= {str(e["writer"]) for e in read_log(name, lines, publics).entries
                        if e.get("kind") == "announce"}
    return writers


class SyslogMirror:
    """Copies every checkpoint line to a syslog collector over TCP (RFC 5424, octet-counted framing, RFC 6587).

    A mirror, not a log the verifier reads back: the SIEM keeps its own copy, out of the
    database administrators' reach, to compare with `tokenvault audit verify` (same `n`,
    `prev` and signature). A line the collector did not take fails the append like any sink.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 2.0, app: str = "tokenvault") -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._app = app
        self._host = socket.gethostname()[:255]
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.name = f"syslog:{host}:{port}"

    def _frame(self, line: str, at: datetime) -> bytes:
        # PRI 110 = facility 13 (log audit) * 8 + severity 6 (informational).
        message = (f"<110>1 {at.astimezone(UTC).isoformat()} {self._host} {self._app} {os.getpid()} "
                   f"checkpoint - {line}").encode()
        return str(len(message)).encode() + b" " + message

    def send(self, lines: Sequence[str], at: datetime) -> None:
        payload = b"".join(self._frame(line, at) for line in lines)
        with self._lock:
            for attempt in (1, 2):  # one reconnect: the collector may have closed an idle connection
                try:
                    if self._sock is None:
                        self._sock = socket.create_connection(self._address, timeout=self._timeout)
                    self._sock.sendall(payload)
                    return
                except OSError:
                    if self._sock is not None:
                        self._sock.close()
                    self._sock = None
                    if attempt == 2:
                        raise
