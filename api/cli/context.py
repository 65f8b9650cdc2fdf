"""What every database command of the CLI starts from: the vault's components, found where they should be,
and closed when the command ends.

Closing anchors the command's audit events in the checkpoint sink before the process exits (a short-lived
writer leaves no un-anchored event), then closes its connections.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from api.settings import Settings
from api.wiring import Components, build

__all__ = ["command_components", "iso", "IsoTime", "EXIT_REFUSED", "EXIT_UNREACHABLE", "EXIT_INTERNAL"]

# Exit codes (README, "Command line"): 0 done; 2 invalid or refused (bad arguments, policy, input); 3 the vault
# cannot be reached (data directory, database, key service, address in use); 70 an internal error.
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERNAL = 2, 3, 70


def command_components(settings: Settings | None = None) -> Components:
    """Built once per command; its audit events are anchored and its connections closed when it ends."""
    settings = settings or Settings.from_env()
    require_vault(settings)
    parts = build(settings)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(parts.engine.dispose)  # no pooled connection outlives the command
        context.call_on_close(parts.trail.close)  # runs first: callbacks run last-registered first
    return parts


def require_vault(settings: Settings) -> None:
    """An embedded vault's database must already be there: building would create an empty one, and advising
    `init` in the wrong directory would make a second vault. So name the directory and the variable."""
    if settings.database_url.startswith("sqlite:///"):
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        if not database.is_file():
            click.echo(f"error: no vault in {settings.data_dir}: set TOKENVAULT_DATA_DIR to the vault's data "
                       "directory (default ./var, relative to where the command runs)", err=True)
            sys.exit(EXIT_UNREACHABLE)


def iso(value: Any) -> Any:
    """ISO 8601 UTC with `Z`, as every command prints times."""
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


class IsoTime(click.ParamType):
    """An ISO 8601 time option, in UTC (no offset means UTC); anything else is a usage error, not a traceback."""

    name = "ISO8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            self.fail("is not an ISO 8601 time, e.g. 2026-01-31T00:00:00Z", param, ctx)
