"""`tokenvault audit ...`: verify, checkpoint, export to a SIEM, archive old events."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import logging.handlers
import secrets
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import and_, delete, func, or_, select

from api.cli.context import IsoTime, components
from api.wiring import Components
from vault.audit.trail import EventQuery, event_json, select_events
from vault.storage.schema import audit_archives, audit_events, insert_ignoring_conflict

__all__ = ["audit"]


def _components() -> Components:
    return components()


@click.group()
def audit() -> None:
    """Verify, export and archive the audit trail."""


@audit.command()
@click.option("--archives", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="also verify archive files in this directory")
def verify(archives: Path | None) -> None:
    """Verify every chain link, MAC and checkpoint; exit 1 on any break."""
    parts = _components()
    with parts.engine.connect() as conn:
        report = parts.trail.verify(conn)
        problems = _verify_archives(parts, conn, archives) if archives else []
    result = report.public()
    if problems:
        result["intact"] = False
        result["archives"] = problems
    click.echo(json.dumps(result, indent=1))
    sys.exit(0 if result["intact"] else 1)


@audit.command()
def checkpoint() -> None:
    """Write signed checkpoints of every chain head to the sink (run from cron, e.g. every minute)."""
    parts = _components()
    click.echo(json.dumps({"checkpoints": parts.trail.checkpoint(parts.engine, all_writers=True)}))


def _cef_escape(value: object, header: bool = False) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\")
    text = text.replace("|", "\\|") if header else text.replace("=", "\\=")
    return text.replace("\r", " ").replace("\n", " ")


def cef_line(event: dict[str, Any]) -> str:
    """ArcSight Common Event Format: header fields, then key=value extensions."""
    severity = {"allowed": 3, "denied": 6, "error": 8}.get(event["outcome"], 5)
    header = ["CEF:0", "TokenVault", "TokenVault", "1", event["action"], f"{event['action']} {event['outcome']}",
              str(severity)]
    extension = {
        "rt": event["at"], "suser": event["actor"], "spriv": event["role"], "outcome": event["outcome"],
        "reason": event["error_code"], "src": event["origin"]["source"], "requestClientApplication":
        event["origin"]["user_agent"], "externalId": event["seq"], "cs1Label": "token",
        "cs1": event["resource"]["token"], "cs2Label": "subject", "cs2": event["resource"]["subject_id"],
        "cs3Label": "purpose", "cs3": event["purpose"], "cs4Label": "request_id",
        "cs4": event["origin"]["request_id"],
    }
    head = "|".join(_cef_escape(item, header=True) if i else item for i, item in enumerate(header))
    return head + "|" + " ".join(f"{k}={_cef_escape(v)}" for k, v in extension.items() if v is not None)


@audit.command()
@click.option("--since", type=IsoTime(), default=None, help="ISO 8601 time (default: everything)")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "cef"]), default="jsonl")
@click.option("--syslog", default=None, help="HOST:PORT to forward each line to over UDP syslog")
def export(since: datetime | None, fmt: str, syslog: str | None) -> None:
    """Stream events for a SIEM, to stdout or to syslog."""
    parts = _components()
    start = since
    forward = None
    if syslog:
        host, _, port = syslog.rpartition(":")
        forward = logging.handlers.SysLogHandler(address=(host, int(port)))
    cursor = 0
    with parts.engine.connect() as conn:
        while True:
            rows = list(conn.execute(select_events(EventQuery(since=start, after_seq=cursor, limit=1000))).mappings())
            for row in rows:
                event = event_json(row)
                line = cef_line(event) if fmt == "cef" else json.dumps(event)
                if forward is not None:
                    forward.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
                else:
                    click.echo(line)
            if len(rows) < 1000:
                break
            cursor = int(rows[-1]["seq"])
    if forward is not None:
        forward.close()


def _row_json(row: Any) -> dict[str, Any]:
    return {k: (bytes(v).hex() if isinstance(v, bytes | memoryview) else v.isoformat()
                if isinstance(v, datetime) else v) for k, v in dict(row).items()}


@audit.command()
@click.option("--older-than-days", type=int, default=90, show_default=True,
              help="archive events older than this (PCI DSS 10.5.1 keeps 3 months online)")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def archive(older_than_days: int, out: Path) -> None:
    """Move old events to a gzip JSONL file with a MAC; `audit verify --archives` still checks them."""
    parts = _components()
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    out.mkdir(parents=True, exist_ok=True)
    name = f"audit-{cutoff:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.jsonl.gz"
    with parts.engine.begin() as conn:
        # Whole chain prefixes only: per writer, everything up to its last event before the cutoff.
        ends = dict(conn.execute(select(audit_events.c.writer, func.max(audit_events.c.chain_seq))
                                 .where(audit_events.c.at < cutoff).group_by(audit_events.c.writer)).all())
        if not ends:
            click.echo(json.dumps({"archived": 0}))
            return
        chosen = or_(*[and_(audit_events.c.writer == w, audit_events.c.chain_seq <= s) for w, s in ends.items()])
        rows = list(conn.execute(select(audit_events).where(chosen)
                                 .order_by(audit_events.c.writer, audit_events.c.chain_seq)).mappings())
        payload = gzip.compress("".join(json.dumps(_row_json(r)) + "\n" for r in rows).encode())
        key_id, key = parts.keys.active_hmac_key(conn, "audit")
        (out / name).write_bytes(payload)
        mac = hmac.new(key.expose(), b"archive|" + name.encode() + b"|" + payload, hashlib.sha256).hexdigest()
        (out / (name + ".mac")).write_text(json.dumps({"key_id": key_id, "mac": mac}))
        last = {r["writer"]: r for r in rows}
        for writer, row in last.items():
            conn.execute(delete(audit_archives).where(audit_archives.c.writer == writer))
            conn.execute(insert_ignoring_conflict(conn, audit_archives), [{
                "writer": writer, "chain_seq": row["chain_seq"], "mac": row["mac"], "archive": name,
                "archived_at": datetime.now(UTC)}])
        conn.execute(delete(audit_events).where(chosen))
    click.echo(json.dumps({"archived": len(rows), "file": str(out / name)}))


def _verify_archives(parts: Components, conn: Any, directory: Path) -> list[str]:
    """Check each archive's MAC and that chains link from their first event through every archive."""
    from vault.audit.trail import GENESIS, mac_of

    problems: list[str] = []
    heads: dict[str, tuple[int, bytes]] = {}
    for path in sorted(directory.glob("audit-*.jsonl.gz")):
        try:
            meta = json.loads((path.parent / (path.name + ".mac")).read_text())
            key = parts.keys.hmac_key_by_id(conn, meta["key_id"]).expose()
        except (OSError, ValueError, KeyError):
            problems.append(f"{path.name}: MAC file missing or unreadable")
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
            event_key = parts.keys.hmac_key_by_id(conn, row["mac_key_id"]).expose()
            if (row["chain_seq"] != seq + 1 or bytes.fromhex(row["prev_mac"]) != prev
                    or mac_of(event_key, prev, row).hex() != row["mac"]):
                problems.append(f"{path.name}: chain broken at {row['writer']}#{row['chain_seq']}")
                break
            heads[row["writer"]] = (row["chain_seq"], bytes.fromhex(row["mac"]))
    for record in conn.execute(select(audit_archives)).mappings():
        if heads.get(record["writer"], (0, b""))[1] != bytes(record["mac"]):
            problems.append(f"archive of {record['writer']} does not end where the database continues")
    return problems
