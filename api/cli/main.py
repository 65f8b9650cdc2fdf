"""The `tokenvault` command: init, serve, clients, purge."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from api.access_settings import AccessSettings
from api.cli import access
from api.cli.audit import audit
from api.cli.context import command_components
from api.cli.keys import keys
from api.cli.relay import relay
from api.cli.subjects import subjects, transfer
from api.settings import Settings
from api.wiring import Components, build, build_provider
from kms.local import create_master_key_file
from vault.access.policy import load_policy
from vault.audit.trail import Actor
from vault.errors import VaultError
from vault.storage.migrate import upgrade

__all__ = ["main"]


def _components() -> Components:
    return command_components()  # events anchored, no pooled connection outlives the command


def _fail(error: VaultError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


@click.group()
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
        parts = build(settings, provider=provider)
        upgrade(parts.engine)
        with parts.engine.begin() as conn:
            created = parts.keys.ensure_domain_keys(conn)
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
@click.option("--workers", type=int, default=None, help="gunicorn worker processes")
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the HTTP API under gunicorn."""
    settings = Settings.from_env()
    try:  # a bad policy or rate limit refuses to start here, with its reason, not in every worker
        AccessSettings.from_env(settings.env, load_policy(settings.policy_path))
    except VaultError as error:
        _fail(error)
    env = dict(os.environ)
    env["TOKENVAULT_BIND"] = bind or settings.bind
    env["TOKENVAULT_WORKERS"] = str(workers or settings.workers)
    conf = Path(__file__).resolve().parents[1] / "gunicorn_conf.py"
    args = [sys.executable, "-m", "gunicorn", "-c", str(conf), "api.http.app:wsgi_app()"]
    os.execve(sys.executable, args, env)  # noqa: S606 - fixed argv, no shell


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
    for row in _components().clients.list():
        click.echo(json.dumps(row, default=str))


@clients.command("revoke")
@click.argument("client_id")
def clients_revoke(client_id: str) -> None:
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
