"""`tokenvault audit ...`: verify, checkpoint, export to a SIEM, archive old events."""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy.exc import SQLAlchemyError

from api.cli.context import IsoTime, command_components
from api.wiring import Components
from vault.audit.archive import archive_events, verify_archive_files
from vault.audit.trail import EventQuery, event_json, select_events
from vault.errors import VaultError

__all__ = ["audit"]


def _components() -> Components:
    return command_components()


@click.group()
def audit() -> None:
    """Verify, export and archive the audit trail."""


class _Progress:
    """A progress line on stderr (a terminal only): events verified, rate and time left."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._shown = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self._shown or total == 0:
            return
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = int(width * done / total)
        click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} events  {rate:,.0f}/s  "
                   f"ETA {eta:,.0f} s ", nl=done >= total, err=True)


EXIT_BROKEN = 1
EXIT_UNANCHORED = 3  # intact, but a chain's tail was never anchored (a writer crashed): see README


@audit.command()
@click.option("--archives", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="also verify archive files in this directory (archive records are always checked)")
@click.option("--full", is_flag=True, help="every event, not only those after the last verified anchor")
def verify(archives: Path | None, full: bool) -> None:
    """Verify chains, archive records and the checkpoint log; exit 1 on a break, 3 on an un-anchored tail.

    Incremental by default: events up to the last run's verified, anchored checkpoints are not
    walked again (their anchors are still checked); `--full` walks everything.
    """
    parts = _components()
    try:
        report = parts.audit_log.run_job(parts.audit_log.start_local_job("host"), _Progress(), full=full)
        if report is None:
            click.echo(json.dumps({"error": "verification_failed"}), err=True)
            sys.exit(2)
        with parts.engine.connect() as conn:
            problems = verify_archive_files(parts.keys, conn, archives) if archives else []
    except VaultError as error:  # the key service or database is out of reach: not a verdict on the trail
        click.echo(json.dumps({"error": error.code, "message": str(error)}), err=True)
        sys.exit(2)
    except SQLAlchemyError:
        click.echo(json.dumps({"error": "storage_unavailable", "message": "database unavailable"}), err=True)
        sys.exit(2)
    result = report.public()
    if problems:
        result["intact"] = False
        result["archive_files"] = problems
    click.echo(json.dumps(result, indent=1))
    if not result["intact"]:
        sys.exit(EXIT_BROKEN)
    sys.exit(0 if report.anchored else EXIT_UNANCHORED)


@audit.command()
def checkpoint() -> None:
    """Anchor the head of every announced chain in the checkpoint sink (e.g. from cron)."""
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


class SyslogUnreachable(click.ClickException):
    """The --syslog host does not resolve: one line naming it, the exit code of an unreachable service."""

    exit_code = 3


def _syslog_handler(where: str) -> logging.handlers.SysLogHandler:
    host, _, port = where.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter("must be HOST:PORT (port 1-65535)", param_hint="--syslog")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except OSError:  # gaierror: the resolver's own words name neither the host nor the option
        raise SyslogUnreachable(f"syslog host {host} cannot be resolved (--syslog)") from None
    return logging.handlers.SysLogHandler(address=(host, int(port)))


@audit.command()
@click.option("--since", type=IsoTime(), default=None, help="ISO 8601 time (default: everything)")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "cef"]), default="jsonl")
@click.option("--syslog", default=None, help="HOST:PORT to forward each line to over UDP syslog")
def export(since: datetime | None, fmt: str, syslog: str | None) -> None:
    """Stream events for a SIEM, to stdout or to syslog."""
    forward = _syslog_handler(syslog) if syslog else None  # a wrong address fails before any work
    parts = _components()
    start = since
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


@audit.command()
@click.option("--older-than-days", type=int, default=90, show_default=True,
              help="archive events older than this (PCI DSS 10.5.1 keeps 3 months online)")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def archive(older_than_days: int, out: Path) -> None:
    """Move old events to a gzip JSONL file with a MAC; chains continue, `audit verify` checks the records."""
    parts = _components()
    now = datetime.now(UTC)
    with parts.engine.begin() as conn:
        done = archive_events(parts.keys, conn, now - timedelta(days=older_than_days), out, now)
    click.echo(json.dumps({"archived": done.events, **({"file": str(done.path)} if done.path else {})}))
