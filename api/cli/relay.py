"""`tokenvault relay routes list|create|disable`: relay routes from the host.

The command runs on the host, which holds the database and the master key anyway (as HOST, like
`operators create`): what it creates or disables is approved at once. Over HTTP every change needs
a second admin (`POST /v1/relay-routes`, then `POST /v1/approvals/<id>/approve`).

A route document is JSON (see README, Relay); upstream credentials in it (a bearer secret, a
client key) are sealed at once and never printed again. Read it from a file you then delete, or
from stdin.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO

import click

from api.settings import Settings
from api.wiring import Components, build
from vault.audit.trail import HOST, Origin
from vault.errors import VaultError

__all__ = ["relay"]


def _parts() -> Components:
    parts = build(Settings.from_env())
    click.get_current_context().call_on_close(parts.engine.dispose)
    return parts


def _origin() -> Origin:
    return Origin(request_id=f"cli-{os.getpid()}", source="localhost", user_agent="tokenvault-cli")


def _fail(error: VaultError | str) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


@click.group()
def relay() -> None:
    """The relay: routes that forward requests with tokens filled in, or tokenize inbound ones."""


@relay.group()
def routes() -> None:
    """Relay routes (admins)."""


@routes.command("list")
def list_routes() -> None:
    """Current routes, one JSON object a line, without their secrets."""
    for route in _parts().relay_routes.list(HOST, _origin()):
        click.echo(json.dumps(route))


@routes.command("create")
@click.argument("document", type=click.File("r"))
@click.option("--new-publishable-key", is_flag=True, help="inbound routes: issue a new publishable key")
def create(document: IO[str], new_publishable_key: bool) -> None:
    """Create a route, or a new version of one, from DOCUMENT (a JSON file, or - for stdin).

    Prints {"route", "version"} and, for an inbound route's first version (or with
    --new-publishable-key), its publishable key, once.
    """
    try:
        body = json.load(document)
    except ValueError:
        _fail("the route document is not valid JSON")
    try:
        proposal = _parts().relay_routes.propose(HOST, body, _origin(), new_publishable_key=new_publishable_key)
    except VaultError as error:
        _fail(error)
    out = {"route": proposal.name, "version": proposal.version}
    if proposal.publishable_key:
        out["publishable_key"] = proposal.publishable_key
    click.echo(json.dumps(out))


@routes.command("disable")
@click.argument("name")
def disable(name: str) -> None:
    """Disable a route (a new version with enabled = false); callers get 404 from then on."""
    try:
        proposal = _parts().relay_routes.disable(HOST, name, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"route": proposal.name, "version": proposal.version, "enabled": False}))
