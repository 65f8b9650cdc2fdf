"""Archiving old events: whole chain prefixes move to a MACed file, the chains go on.

An archive keeps, per writer, a record of where the chain continues (`audit_archives`:
last archived chain_seq and MAC). The record is itself authenticated with the audit key, so
an insider cannot forge one to hide a chain's prefix, and a writer that keeps serving
continues its chain after the archived head instead of restarting it (its next event
links to the archived MAC). Global `seq` numbers come from a counter that archiving does
not touch, so they are never reused.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection

from vault.audit.chain import GENESIS, audit_key, iso, mac_of
from vault.errors import VaultError
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_archives, audit_events, insert_ignoring_conflict

__all__ = ["archive_events", "record_mac", "seal_legacy_archives", "verify_archive_files", "Archived"]


def record_mac(key: bytes, row: Any) -> bytes:
    """The MAC of an archive record: every column but the MAC itself."""
    values = [row["writer"], int(row["chain_seq"]), bytes(row["mac"]).hex(), row["archive"],
              iso(row["archived_at"]), row["last_seq"], row["mac_key_id"]]
    payload = json.dumps(values, separators=(",", ":")).encode("utf-8")
    return hmac.new(key, b"archive-record|" + payload, hashlib.sha256).digest()


def seal_legacy_archives(keys: KeyHierarchy, conn: Connection) -> int:
    """MAC archive records written before they were authenticated (run once by `tokenvault init`)."""
    rows = list(conn.execute(select(audit_archives).where(audit_archives.c.record_mac.is_(None))).mappings())
    if not rows:
        return 0
    key_id, key = keys.active_hmac_key(conn, "audit")
    for row in rows:
        sealed = {**row, "mac_key_id": key_id}
        conn.execute(audit_archives.update().where(audit_archives.c.writer == row["writer"])
                     .values(mac_key_id=key_id, record_mac=record_mac(key.expose(), sealed)))
    return len(rows)


def _row_json(row: Any) -> dict[str, Any]:
    return {k: (bytes(v).hex() if isinstance(v, bytes | memoryview) else iso(v)
                if isinstance(v, datetime) else v) for k, v in dict(row).items()}


@dataclass(frozen=True)
class Archived:
    events: int
    path: Path | None


def archive_events(keys: KeyHierarchy, conn: Connection, cutoff: datetime, out: Path, now: datetime) -> Archived:
    """Move events older than `cutoff` (whole chain prefixes) to a gzip JSONL file with a MAC.

    Runs in the caller's transaction; on PostgreSQL the archived rows are locked first, so a
    concurrent archive waits and skips them. Writers keep serving meanwhile.
    """
    ends = dict(conn.execute(select(audit_events.c.writer, func.max(audit_events.c.chain_seq))
                             .where(audit_events.c.at < cutoff).group_by(audit_events.c.writer)).all())
    if not ends:
        return Archived(0, None)
    chosen = or_(*[and_(audit_events.c.writer == w, audit_events.c.chain_seq <= s) for w, s in ends.items()])
    rows = list(conn.execute(select(audit_events).where(chosen).with_for_update()
                             .order_by(audit_events.c.writer, audit_events.c.chain_seq)).mappings())
    if not rows:
        return Archived(0, None)
    name = f"audit-{cutoff:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.jsonl.gz"
    payload = gzip.compress("".join(json.dumps(_row_json(r)) + "\n" for r in rows).encode())
    key_id, key = keys.active_hmac_key(conn, "audit")
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(payload)
    mac = hmac.new(key.expose(), b"archive|" + name.encode() + b"|" + payload, hashlib.sha256).hexdigest()
    (out / (name + ".mac")).write_text(json.dumps({"key_id": key_id, "mac": mac}))
    last: dict[str, Any] = {}
    top_seq: dict[str, int] = {}
    for row in rows:
        last[row["writer"]] = row
        top_seq[row["writer"]] = max(top_seq.get(row["writer"], 0), int(row["seq"]))
    for writer, row in last.items():
        record = {"writer": writer, "chain_seq": row["chain_seq"], "mac": bytes(row["mac"]), "archive": name,
                  "archived_at": now, "last_seq": top_seq[writer], "mac_key_id": key_id}
        record["record_mac"] = record_mac(key.expose(), record)
        conn.execute(delete(audit_archives).where(audit_archives.c.writer == writer))
        conn.execute(insert_ignoring_conflict(conn, audit_archives), [record])
    conn.execute(delete(audit_events).where(chosen))
    return Archived(len(rows), out / name)


def verify_archive_files(keys: KeyHierarchy, conn: Connection, directory: Path) -> list[str]:
    """Check each archive file's MAC and that chains link from their first event through every archive."""
    problems: list[str] = []
    heads: dict[str, tuple[int, bytes]] = {}
    for path in sorted(directory.glob("audit-*.jsonl.gz")):
        try:
            meta = json.loads((path.parent / (path.name + ".mac")).read_text())
            key = audit_key(keys, conn, str(meta["key_id"]))
        except (OSError, ValueError, KeyError, TypeError, VaultError):
            problems.append(f"{path.name}: MAC file missing, unreadable or not under an audit key")
            continue
        payload = path.read_bytes()
        expected = hmac.new(key, b"archive|" + path.name.encode() + b"|" + payload, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, str(meta["mac"])):
            problems.append(f"{path.name}: archive modified")
            continue
        for line in gzip.decompress(payload).decode().splitlines():
            row = json.loads(line)
            row["at"] = datetime.fromisoformat(row["at"])
            seq, prev = heads.get(row["writer"], (0, GENESIS))
            try:
                event_key = audit_key(keys, conn, str(row["mac_key_id"]))
            except VaultError:
                problems.append(f"{path.name}: event under a key that is not an audit key")
                break
            if (row["chain_seq"] != seq + 1 or bytes.fromhex(row["prev_mac"]) != prev
                    or mac_of(event_key, prev, row).hex() != row["mac"]):
                problems.append(f"{path.name}: chain broken at {row['writer']}#{row['chain_seq']}")
                break
            heads[row["writer"]] = (row["chain_seq"], bytes.fromhex(row["mac"]))
    for record in conn.execute(select(audit_archives)).mappings():
        if heads.get(record["writer"], (0, b""))[1] != bytes(record["mac"]):
            problems.append(f"archive of {record['writer']} does not end where the database continues")
    return problems
