"""The `tokenvault` command: init, serve, clients, purge."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
from sqlalchemy.exc import SQLAlchemyError

from api.access_settings import AccessSettings
from api.cli import access
from api.cli.audit import audit
from api.cli.context import EXIT_INTERNAL, EXIT_REFUSED, EXIT_UNREACHABLE, command_components, iso
from api.cli.integrity import integrity
from api.cli.keys import keys
from api.cli.relay import relay
from api.cli.subjects import subjects, transfer
from api.settings import Settings
from api.wiring import build, build_provider, checkpoint_signing, signing_key_name, transit_provider
from kms.local import create_master_key_file
from vault.access.policy import load_policy
from vault.audit.trail import Actor
from vault.errors import AuditWriteFailed, KeyServiceUnavailable, StorageUnavailable, VaultError
from vault.keys.row_mac import RowMacs
from vault.storage.migrate import upgrade

__all__ = ["main"]

_UNREACHABLE = (StorageUnavailable, KeyServiceUnavailable, AuditWriteFailed)
_components, _iso = command_components, iso  # events anchored, no pooled connection outlives the command


def _fail(error: VaultError) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(EXIT_UNREACHABLE if isinstance(error, _UNREACHABLE) else EXIT_REFUSED)


class _Cli(click.Group):
    """Every command under one handler: a user error is one line and a documented exit code, never a
    traceback (TOKENVAULT_DEBUG=1 lets an unexpected one through, for a bug report)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except VaultError as error:
            _fail(error)
        except SQLAlchemyError as error:
            click.echo(f"error: the database cannot be used ({type(error).__name__}); check TOKENVAULT_DATABASE_URL "
                       "or TOKENVAULT_DATA_DIR", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            click.echo(f"error: {error.strerror or type(error).__name__}{where}", err=True)
            sys.exit(EXIT_UNREACHABLE)
        except Exception as error:
            if os.environ.get("TOKENVAULT_DEBUG") == "1":
                raise
            click.echo(f"error: internal error ({type(error).__name__}); TOKENVAULT_DEBUG=1 shows the traceback",
                       err=True)
            sys.exit(EXIT_INTERNAL)


@click.group(cls=_Cli)
def main() -> None:
    """TokenVault: tokenize card and personal data under envelope encryption."""
    os.umask(0o077)  # database, keyring and key files are readable by the service user only


@main.command()
def init() -> None:
    """Create the data dir, keys and database schema (idempotent)."""
    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    try:
        if settings.kms == "local" and not (os.environ.get("TOKENVAULT_MASTER_KEY")
                                            or os.environ.get("TOKENVAULT_MASTER_KEY_FILE")):
            key_file = settings.data_dir / "master.key"
            if create_master_key_file(key_file):
                click.echo(f"generated a new master key at {key_file} (mode 0600); back it up apart from the "
                           "database, or set TOKENVAULT_MASTER_KEY / TOKENVAULT_MASTER_KEY_FILE", err=True)
        provider = build_provider(settings)
        if provider.initialise():
            click.echo(f"created key-encryption key in the {provider.name} provider", err=True)
        if checkpoint_signing(settings) == "transit":
            name = signing_key_name(settings)
            if transit_provider(settings, provider).ensure_signing_key(name):
                click.echo(f"created audit checkpoint signing key {name} (ed25519, not exportable) in Transit",
                           err=True)
        parts = build(settings, provider=provider)
        try:
            upgrade(parts.engine)
            with parts.engine.begin() as conn:
                rebound = parts.keys.bind_legacy_wrappings(conn)
                created = parts.keys.ensure_domain_keys(conn)
                sealed = RowMacs(parts.keys).backfill(conn)
        finally:
            parts.trail.close()
            parts.engine.dispose()  # `init` also runs in-process (tests): no pooled connection outlives it
        if sealed:
            click.echo(f"sealed {sealed} existing rows with their row MAC", err=True)
        if rebound:
            click.echo(f"bound purpose and id into the wrapping of {rebound} domain keys", err=True)
        if created:
            click.echo(f"created {len(created)} domain keys", err=True)
        refused = parts.clients.human_role_clients()
        adopted = parts.trail.adopt(parts.engine)  # chains from before the checkpoint sink, anchored once
        if adopted:
            click.echo(f"anchored {adopted} existing audit chains in the checkpoint sink", err=True)
        parts.trail.close()
        parts.engine.dispose()
    except VaultError as error:
        _fail(error)
    for line in human_role_warning(refused):
        click.echo(line, err=True)
    click.echo("initialised", err=True)


def human_role_warning(refused: list[dict[str, object]]) -> list[str]:
    """What `init` and the service's start log say about API keys of human roles (refused since issue 15)."""
    if not refused:
        return []
    lines = [f"WARNING: {len(refused)} API client(s) carry a human role; their keys are now refused "
             "(API keys may carry only machine roles; admin, privacy_officer and auditor need an operator "
             "with password + TOTP):"]
    lines += [f"  {row['id']} name={row['name']} role={row['role']}" for row in refused]
    lines.append("  what to do: `tokenvault clients revoke <id>` each one, then give the person an operator account "
                 "(`tokenvault operators create`), or a machine-role client for a service "
                 "(e.g. audit_export for a SIEM)")
    return lines


@main.command()
@click.option("--bind", default=None, help="host:port (default TOKENVAULT_BIND or 127.0.0.1:8080)")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="worker processes (default TOKENVAULT_WORKERS or 2)")
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the HTTP API (granian, WSGI) until SIGTERM, which drains requests in flight."""
    try:  # a bad policy, rate limit or retired setting refuses to start here, with its reason, not in every worker
        settings = Settings.from_env()
        settings.check_serving()
        AccessSettings.from_env(settings.env, load_policy(settings.policy_path))
    except VaultError as error:
        _fail(error)
    env = dict(os.environ)
    env["TOKENVAULT_BIND"] = bind or settings.bind
    env["TOKENVAULT_WORKERS"] = str(workers or settings.workers)
    # api/http/server.py runs granian; this process becomes its master (the CLI does not import the HTTP face).
    os.execve(sys.executable, [sys.executable, "-m", "api.http.server"], env)  # noqa: S606 - fixed argv, no shell


@main.group()
def clients() -> None:
    """Manage API clients."""


@clients.command("create")
@click.option("--name", required=True)
@click.option("--role", required=True)
def clients_create(name: str, role: str) -> None:
    """Create a client; prints its API key once (only a keyed hash is stored)."""
    try:
        client_id, api_key = _components().clients.create(name, role)
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"client_id": client_id, "api_key": api_key.expose()}))


@clients.command("list")
def clients_list() -> None:
    """List API clients, one JSON object a line (times in ISO 8601 UTC); never their keys."""
    rows = _components().clients.list()
    for row in rows:
        click.echo(json.dumps({name: _iso(value) for name, value in row.items()}))
    if not rows:
        click.echo("no clients", err=True)


@clients.command("revoke")
@click.argument("client_id")
def clients_revoke(client_id: str) -> None:
    """Revoke a client's API keys at once (within TOKENVAULT_AUTH_CACHE_SECONDS on every worker)."""
    try:
        _components().clients.revoke(client_id)
    except VaultError as error:
        _fail(error)
    click.echo(f"revoked {client_id}", err=True)


@clients.command("rotate")
@click.argument("client_id")
@click.option("--grace", type=int, default=3600, show_default=True,
              help="seconds the current key keeps working (0 to 604800)")
def clients_rotate(client_id: str, grace: int) -> None:
    """Give a client a new API key; prints {"client_id", "api_key"} once."""
    try:
        api_key = _components().clients.rotate(client_id, grace)
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"client_id": client_id, "api_key": api_key.expose(), "previous_key_valid_for": grace}))


@clients.command("demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="env file for the demo keys")
def clients_demo(out: Path) -> None:
    """Create one demo client per machine role unless clients exist; writes their keys to OUT (mode 0600)."""
    parts = _components()
    if parts.clients.list():
        click.echo("clients exist; no demo clients created", err=True)
        return
    lines = []
    for role in parts.policy.machine_roles:
        _, api_key = parts.clients.create(f"demo-{role}", role)
        lines.append(f"{role.upper()}_KEY={api_key.expose()}")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")
    click.echo("demo clients created; their keys (shown once, also in " + str(out) + "):", err=True)
    for line in lines:
        click.echo("  " + line, err=True)


main.add_command(audit)
main.add_command(subjects)
main.add_command(keys)
main.add_command(transfer)
main.add_command(integrity)
main.add_command(relay)
for _group in (access.operators, access.auth, access.approvals, access.policy):
    main.add_command(_group)


@main.command()
def purge() -> None:
    """Delete expired tokens (CVVs first of all) and data past its retention; safe to run from cron."""
    parts = _components()
    try:
        count = parts.tokens.purge_expired()
        kept = parts.retention.purge(Actor(id="cli:purge", role="system"))
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"purged": count, **kept}))
