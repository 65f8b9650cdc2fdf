"""Verifying the audit trail: chains, archive records, and the checkpoint log outside the database.

What each check catches (the README's audit section lists the outcomes):
- a chain link or MAC that does not hold: an event modified, inserted, reordered, moved
  between writers or renumbered (`seq` is under the MAC);
- an archive record whose own MAC does not hold: forged to hide a chain prefix;
- a MAC key that is not an audit key, or an audit key that cannot be opened;
- a chain the checkpoint log never announced (forged), or whose checkpointed head the
  database no longer reaches (deleted whole, or its tail truncated);
- a checkpoint log whose chain or signatures break, or that no longer reaches the last entry
  the database saw written (deleted, truncated, rolled back).
Events after a chain's last checkpoint are not yet anchored: they are reported as such,
with their number, not as a break (a writer that crashed before its next checkpoint).

Integrity failures are results, never exceptions: an unreadable key or a malformed row
yields a `Break` with its reason. Only an unreachable key service or database raises.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection

from vault.audit.archive import record_mac
from vault.audit.chain import GENESIS, audit_key, event_fields, iso, mac_of
from vault.audit.checkpoints import CheckpointSink, Signer, SinkLog, read_log, sink_heads
from vault.errors import AuditKeyRefused, DecryptionFailed, KeyServiceUnavailable, VaultError
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_archives, audit_events

__all__ = ["Break", "Unanchored", "Verification", "verify_trail", "ANCHOR_GRACE"]

# A live writer's newest events wait for its next checkpoint (at most 1 s or 1,000 events):
# a tail younger than this is "pending", older means the writer stopped without anchoring it.
ANCHOR_GRACE = timedelta(seconds=5)
_PROGRESS_EVERY = 20_000


@dataclass(frozen=True)
class Break:
    """The first place verification failed."""

    reason: str
    writer: str | None = None
    chain_seq: int | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Unanchored:
    """Events after a chain's last checkpoint: deletable without detection until anchored."""

    writer: str
    events: int
    last_at: str
    stale: bool  # older than ANCHOR_GRACE: the writer stopped (crashed) before anchoring them


@dataclass
class Verification:
    events: int = 0
    writers: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0
    archives: int = 0
    broken: Break | None = None
    unanchored: list[Unanchored] = field(default_factory=list)
    incremental: bool = False
    # Per chain, the last anchored event this run verified (chain_seq, MAC hex): where the next run resumes.
    resume: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def intact(self) -> bool:
        return self.broken is None

    @property
    def anchored(self) -> bool:
        """No tail left un-anchored past the checkpoint window."""
        return not any(tail.stale for tail in self.unanchored)

    def public(self) -> dict[str, Any]:
        return {"intact": self.intact, "anchored": self.anchored, "events": self.events, "writers": self.writers,
                "first_seq": self.first_seq, "last_seq": self.last_seq, "checkpoints": self.checkpoints,
                "archives": self.archives, "incremental": self.incremental,
                "broken": asdict(self.broken) if self.broken else None,
                "unanchored": [asdict(tail) for tail in self.unanchored]}


class _Keys:
    """Audit MAC keys by id, purpose-checked once each; a refusal becomes a Break."""

    def __init__(self, keys: KeyHierarchy, conn: Connection) -> None:
        self._keys, self._conn = keys, conn
        self._cache: dict[str, bytes] = {}

    def get(self, key_id: str) -> bytes | str:
        key = self._cache.get(key_id)
        if key is not None:
            return key
        try:
            key = audit_key(self._keys, self._conn, key_id)
        except AuditKeyRefused:
            return "MAC key is not an audit key"
        except KeyServiceUnavailable:
            raise
        except VaultError:
            return "audit key unreadable"
        self._cache[key_id] = key
        return key


@dataclass
class _Head:
    chain_seq: int
    mac: bytes
    at: datetime | None
    archived: int = 0  # chain_seq of the archived prefix


def _check_archives(conn: Connection, keys: _Keys, report: Verification) -> dict[str, _Head]:
    starts: dict[str, _Head] = {}
    for row in conn.execute(select(audit_archives)).mappings():
        report.archives += 1
        key = keys.get(str(row["mac_key_id"])) if row["record_mac"] is not None else "archive record not sealed"
        if isinstance(key, str):
            report.broken = Break(f"archive record refused: {key}", row["writer"], int(row["chain_seq"]))
            return starts
        if not hmac.compare_digest(record_mac(key, row), bytes(row["record_mac"])):
            report.broken = Break("archive record forged or modified", row["writer"], int(row["chain_seq"]))
            return starts
        seq = int(row["chain_seq"])
        starts[row["writer"]] = _Head(seq, bytes(row["mac"]), None, archived=seq)
    return starts


_COLUMNS = [audit_events.c[name] for name in event_fields] + [audit_events.c.prev_mac, audit_events.c.mac]
_WRITER, _CHAIN_SEQ, _KEY_ID, _SEQ, _SCHEME, _ENTITY, _PREV, _MAC = (
    event_fields.index("writer"), event_fields.index("chain_seq"), event_fields.index("mac_key_id"),
    event_fields.index("seq"), event_fields.index("mac_scheme"), event_fields.index("entity"),
    len(event_fields), len(event_fields) + 1)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _resumed_rows(conn: Connection, starts: dict[str, _Head], resume: dict[str, _Head],
                  report: Verification) -> tuple[Iterator[Any], int]:
    """Rows after each chain's last verified, anchored event; that event must still be there, unchanged."""
    tops = dict(conn.execute(select(audit_events.c.writer, func.max(audit_events.c.chain_seq))
                             .group_by(audit_events.c.writer)).all())
    begin: dict[str, int] = {}
    for writer in sorted(set(tops) | set(resume)):
        point = resume.get(writer)
        start = starts.get(writer)
        if point is None or (start is not None and point.chain_seq <= start.chain_seq):
            begin[writer] = start.chain_seq if start else 0
            continue
        mac = conn.execute(select(audit_events.c.mac).where(audit_events.c.writer == writer,
                                                            audit_events.c.chain_seq == point.chain_seq)).scalar()
        if mac is None:
            report.broken = Break("events truncated: a checkpointed event is missing", writer, point.chain_seq)
            return iter(()), 0
        if bytes(mac) != point.mac:
            report.broken = Break("checkpointed event modified", writer, point.chain_seq)
            return iter(()), 0
        starts[writer] = _Head(point.chain_seq, point.mac, None, start.archived if start else 0)
        begin[writer] = point.chain_seq
    total = sum(max(int(tops.get(w, 0)) - b, 0) for w, b in begin.items())
    query = (select(*_COLUMNS).where(audit_events.c.writer == bindparam("w"), audit_events.c.chain_seq > bindparam("b"))
             .order_by(audit_events.c.chain_seq))

    def rows() -> Iterator[Any]:
        for writer, after in begin.items():
            if int(tops.get(writer, 0)) > after:
                yield from conn.execute(query, {"w": writer, "b": after})
    return rows(), total


def _walk_chains(conn: Connection, keys: _Keys, report: Verification, starts: dict[str, _Head],
                 progress: Callable[[int, int], None] | None,
                 resume: dict[str, _Head] | None = None) -> dict[str, _Head]:
    """Every event (or, resuming, every event after the last verified anchor), writer by writer in chain order.

    The hot loop of verification (the README gives its rate): plain tuples in MAC field order,
    one JSON encoding and one one-shot HMAC per event. Returns each chain's head.
    """
    heads: dict[str, _Head] = {}
    found: Iterator[Any]
    if resume:
        found, total = _resumed_rows(conn, starts, resume, report)
        if report.broken:
            return heads
        heads.update({w: h for w, h in starts.items() if w in resume})  # chains with no new event
    else:
        total = int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())
        query = select(*_COLUMNS).order_by(audit_events.c.writer, audit_events.c.chain_seq)
        found = iter(conn.execution_options(yield_per=5000).execute(query))
    writer: str | None = None
    expected, prev, last_seq, scheme, last_at, archived = 0, GENESIS, 0, 1, None, 0
    key_id: str | None = None
    key = b""
    events = 0
    first_seq: int | None = None
    top_seq: int | None = None

    def fail(reason: str, values: Any) -> dict[str, _Head]:
        report.events, report.first_seq, report.last_seq = events, first_seq, top_seq
        report.broken = Break(reason, writer, int(values[_CHAIN_SEQ]), int(values[_SEQ]))
        return heads

    for values in found:
        if values[_WRITER] != writer:
            if writer is not None:
                heads[writer] = _Head(expected - 1, prev, last_at, archived)
            writer = str(values[_WRITER])
            report.writers += 1
            start = starts.get(writer)
            expected, prev, archived = (start.chain_seq + 1, start.mac, start.archived) if start else (1, GENESIS, 0)
            last_seq, scheme = 0, 1
        events += 1
        if progress is not None and events % _PROGRESS_EVERY == 0:
            progress(events, total)
        seq = values[_SEQ]
        if first_seq is None or seq < first_seq:
            first_seq = seq
        if top_seq is None or seq > top_seq:
            top_seq = seq
        chain_seq = values[_CHAIN_SEQ]
        if chain_seq != expected:
            return fail("event missing before this one" if chain_seq > expected else "event inserted", values)
        if values[_KEY_ID] != key_id:
            opened = keys.get(str(values[_KEY_ID]))
            if isinstance(opened, str):
                return fail(opened, values)
            key_id, key = values[_KEY_ID], opened
        if bytes(values[_PREV]) != prev:
            return fail("link to previous event broken", values)
        row_scheme = values[_SCHEME]
        if row_scheme in (2, 3) and row_scheme >= scheme:
            # Scheme 2 covers every column up to `mac_scheme`; scheme 3 adds `entity` (vault.audit.chain).
            end = _PREV if row_scheme == 3 else _ENTITY
            payload = _dumps([values[0].isoformat(), *values[1:end]]).encode("utf-8")
            computed = hmac.digest(key, prev + payload, "sha256")
        elif row_scheme == 1 and scheme == 1:
            computed = mac_of(key, prev, dict(zip(event_fields, values[:_PREV], strict=True)))
        else:
            return fail("event modified", values)
        mac = bytes(values[_MAC])
        if not hmac.compare_digest(computed, mac):
            return fail("event modified", values)
        if seq <= last_seq:
            return fail("events reordered", values)
        prev, expected, last_seq, scheme, last_at = mac, expected + 1, seq, row_scheme, values[0]
    if writer is not None:
        heads[writer] = _Head(expected - 1, prev, last_at, archived)
    report.events, report.first_seq, report.last_seq = events, first_seq, top_seq
    if progress is not None:
        progress(events, total)
    return heads


def _raw_logs(sinks: Sequence[CheckpointSink]) -> dict[str, list[str]]:
    raw: dict[str, list[str]] = {}
    for sink in sinks:
        raw.update(sink.logs())
    return raw


def _read_logs(sinks: Sequence[CheckpointSink], signer: Signer, conn: Connection,
               report: Verification) -> dict[str, SinkLog]:
    """Read the logs before the database: every head they name was committed before our snapshot."""
    raw = _raw_logs(sinks)
    try:
        publics = signer.public_keys(conn)
    except KeyServiceUnavailable:
        raise
    except (VaultError, ValueError):
        report.broken = Break("checkpoint signing key unreadable")
        return {}
    logs = {name: read_log(name, lines, publics) for name, lines in raw.items()}
    for log in logs.values():
        if log.problem is not None:
            report.broken = Break(log.problem)
    return logs


def _check_sink_heads(conn: Connection, sinks: Sequence[CheckpointSink], signer: Signer,
                      logs: dict[str, SinkLog], report: Verification) -> None:
    for name, n, digest in sink_heads(conn):
        log = logs.get(name)
        if log is None or len(log.hashes) < n:  # appended after we read it? read once more
            again = _raw_logs(sinks).get(name)
            log = read_log(name, again, signer.public_keys(conn)) if again is not None else None
        if log is None:
            report.broken = Break(f"checkpoint log {name} deleted")
            return
        if len(log.hashes) < n:
            report.broken = Break(f"checkpoint log {name} truncated or rolled back")
            return
        if log.hashes[n - 1] != digest:
            report.broken = Break(f"checkpoint log {name} rewritten")
            return


def _check_anchors(conn: Connection, logs: dict[str, SinkLog], heads: dict[str, _Head],
                   now: datetime, report: Verification) -> None:
    announced: set[str] = set()
    anchors: dict[str, tuple[int, str]] = {}
    for log in logs.values():
        report.checkpoints += len(log.entries)
        for entry in log.entries:
            writer = str(entry["writer"])
            if entry["kind"] == "announce":
                announced.add(writer)
            elif int(entry["chain_seq"]) >= anchors.get(writer, (0, ""))[0]:
                anchors[writer] = (int(entry["chain_seq"]), str(entry["mac"]))
    for writer in sorted(heads):
        if writer not in announced:
            report.broken = Break("chain not announced in the checkpoint log (forged, or the log lost)", writer)
            return
    for writer in sorted(announced):
        anchored, mac = anchors.get(writer, (0, ""))
        head = heads.get(writer)
        if anchored and head is None:
            report.broken = Break("chain deleted: its checkpointed events are missing", writer, anchored)
            return
        if head is None:
            continue
        if head.chain_seq < anchored:
            report.broken = Break("events truncated: a checkpointed event is missing", writer, anchored)
            return
        if anchored > head.archived or anchored == head.chain_seq:
            found = head.mac if anchored == head.chain_seq else conn.execute(
                select(audit_events.c.mac).where(audit_events.c.writer == writer,
                                                 audit_events.c.chain_seq == anchored)).scalar()
            if found is None or bytes(found).hex() != mac:
                report.broken = Break("checkpointed event modified", writer, anchored)
                return
        if anchored > head.archived:
            report.resume[writer] = (anchored, mac)
        if head.chain_seq > anchored:
            last_at = head.at or now
            report.unanchored.append(Unanchored(writer, head.chain_seq - anchored, iso(last_at),
                                                stale=last_at < now - ANCHOR_GRACE))


def verify_trail(keys: KeyHierarchy, conn: Connection, sinks: Sequence[CheckpointSink], signer: Signer,
                 now: datetime, *, progress: Callable[[int, int], None] | None = None,
                 resume: dict[str, tuple[int, str]] | None = None) -> Verification:
    """Check everything (events only after `resume`'s points if given); `broken` names the first failure."""
    report = Verification(incremental=bool(resume))
    points = {w: _Head(seq, bytes.fromhex(mac), None) for w, (seq, mac) in (resume or {}).items()}
    try:
        logs = _read_logs(sinks, signer, conn, report) if sinks else {}
        if report.broken:
            return report
        if sinks:
            _check_sink_heads(conn, sinks, signer, logs, report)
            if report.broken:
                return report
        audit_keys = _Keys(keys, conn)
        starts = _check_archives(conn, audit_keys, report)
        if report.broken:
            return report
        heads = _walk_chains(conn, audit_keys, report, starts, progress, points)
        if report.broken:
            return report
        for writer, start in starts.items():
            heads.setdefault(writer, start)
        if sinks:
            _check_anchors(conn, logs, heads, now, report)
    except (ValueError, TypeError, KeyError, OverflowError, DecryptionFailed) as exc:
        report.broken = Break(f"audit data unreadable ({type(exc).__name__})")
    return report
