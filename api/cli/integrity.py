"""`tokenvault integrity check`: sweep every MACed row and cross-check the audit trail (cron)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime

import click

from api.settings import Settings
from api.wiring import build
from vault.access.consistency import sweep
from vault.audit.alerts import integrity_event
from vault.audit.trail import HOST, Origin
from vault.errors import IntegrityFailure, VaultError
from vault.keys.row_mac import RowMacs

__all__ = ["integrity"]


@click.group()
def integrity() -> None:
    """Insider checks: rows the vault did not write, access decisions undone behind its back."""


@integrity.command()
def check() -> None:
    """Print one JSON line per finding and audit it as an `integrity` event; exit 1 if any."""
    parts = build(Settings.from_env())
    try:
        with parts.engine.begin() as conn:
            findings = sweep(conn, RowMacs(parts.keys))
            origin = Origin(request_id="cli-integrity", source="localhost", user_agent="tokenvault-cli")
            events = []
            for finding in findings:
                event = integrity_event(datetime.now(UTC), HOST, origin, IntegrityFailure(finding.table))
                events.append(replace(event, detail=f"table={finding.table} row={finding.row}"[:256]))
            parts.trail.record(conn, events)
    except VaultError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    finally:
        parts.trail.close()
        parts.engine.dispose()
    for finding in findings:
        click.echo(json.dumps(asdict(finding)))
    click.echo(f"{len(findings)} findings", err=True)
    sys.exit(1 if findings else 0)
