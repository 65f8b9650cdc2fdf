"""`tokenvault operators|auth|approvals|policy ...`: human operators, their sessions, dual control, the policy.

Creating an operator is a host command, like creating a client: whoever runs it holds
the database and the master key anyway, so it is how the first admin comes to be. It prints
a one-time enrolment code (to the host's terminal) and no credentials: the new operator runs
`operators enrol` (password of their choosing, TOTP shown as a QR code on a terminal) and
`operators confirm` (first TOTP code), or the same over HTTP (/v1/enrolment/...).
Everything else an operator does from the CLI runs as that operator: log in with
`auth login` (password + TOTP), export the printed token as TOKENVAULT_SESSION, and
give a fresh TOTP code (`--totp`, or a prompt) for each sensitive action.
"""

from __future__ import annotations

import io
import json
import secrets
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import qrcode

from api.cli.context import command_components
from api.settings import Settings
from api.wiring import Components
from vault.access.enrolment import EnrolmentCode
from vault.access.operators import OPERATOR_ROLES, StepUp
from vault.access.policy import Policy, load_policy
from vault.audit.trail import HOST, Actor, Origin
from vault.errors import VaultError
from vault.secret import Secret

__all__ = ["operators", "auth", "approvals", "policy", "qr_text"]


def _components() -> Components:
    """Built once per command; its audit events are anchored and connections closed when it ends."""
    return command_components()


def _origin() -> Origin:
    return Origin(request_id=secrets.token_hex(16), source="cli", user_agent="tokenvault-cli")


def _fail(error: VaultError) -> NoReturn:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if hasattr(value, "isoformat") else value


def _secret_input(given: str | None, prompt: str) -> Secret[str]:
    """An option's value, else a hidden prompt on a terminal, else one line of stdin."""
    if given:
        return Secret(given)
    if sys.stdin.isatty():
        return Secret(click.prompt(prompt, hide_input=True, err=True))  # stdout stays clean JSON
    return Secret(sys.stdin.readline().rstrip("\n"))


def _as_operator(parts: Components, session: str | None) -> Actor:
    if not session:
        click.echo("error: log in first (`tokenvault auth login`) and set TOKENVAULT_SESSION", err=True)
        sys.exit(2)
    return parts.operators.authenticate(Secret(session), _origin())


def _step_up(parts: Components, session: str | None, totp: str | None, operation: str | None) -> StepUp:
    actor = _as_operator(parts, session)
    return parts.operators.step_up(actor, _secret_input(totp, "fresh TOTP code"), _origin(), operation=operation)


def qr_text(data: str) -> str:
    """`data` as an ASCII QR code for a terminal."""
    code = qrcode.QRCode(border=1)
    code.add_data(data)
    out = io.StringIO()
    code.print_ascii(out=out, invert=True)
    return out.getvalue()


_session_option = click.option("--session", envvar="TOKENVAULT_SESSION", default=None,
                               help="session token from `tokenvault auth login` (default: TOKENVAULT_SESSION)")
_totp_option = click.option("--totp", default=None, help="a fresh TOTP code (prompted for if absent)")


# -- operators ---------------------------------------------------------------------------------

@click.group()
def operators() -> None:
    """Human operators (admin, privacy_officer, auditor): password + TOTP."""


def _print_code(issued: EnrolmentCode, username: str) -> None:
    click.echo(json.dumps({"operator_id": issued.operator_id, "username": username,
                           "enrolment_code": issued.code.expose(), "expires_at": _iso(issued.expires_at)}))
    click.echo(f"give the code to {username} in person; they run `tokenvault operators enrol` "
               "(or POST /v1/enrolment/begin) before it expires", err=True)


@operators.command("create")
@click.option("--name", "username", required=True, help="username (a-z, 0-9, '.', '_', '-')")
@click.option("--role", required=True, type=click.Choice(OPERATOR_ROLES))
def operators_create(username: str, role: str) -> None:
    """Create an operator (host only); prints its one-time enrolment code, never a password."""
    try:
        new = _components().operators.create(HOST, username, role, _origin())
    except VaultError as error:
        _fail(error)
    if new.enrolment is not None:
        _print_code(new.enrolment, new.username)


@operators.command("reissue")
@click.argument("operator")
def operators_reissue(operator: str) -> None:
    """Host only (break glass): void OPERATOR's password, TOTP and sessions; print a new enrolment code."""
    try:
        issued = _components().operators.reissue(operator, _origin())
    except VaultError as error:
        _fail(error)
    _print_code(issued, operator)


@operators.command("enrol")
def operators_enrol() -> None:
    """Redeem an enrolment code: choose a password, get a TOTP seed (QR code on a terminal), confirm it.

    On a terminal everything is prompted for; otherwise stdin holds the code, then the password, and
    the first TOTP code goes to `tokenvault operators confirm`.
    """
    code = _secret_input(None, "enrolment code")
    if sys.stdin.isatty():
        password = Secret(click.prompt("new password", hide_input=True, confirmation_prompt=True, err=True))
    else:
        password = Secret(sys.stdin.readline().rstrip("\n"))
    parts = _components()
    try:
        started = parts.enrolments.begin(code, password, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"username": started.username, "totp_uri": started.totp_uri.expose()}))
    if not sys.stdin.isatty():
        click.echo("add the URI to an authenticator app, then run `tokenvault operators confirm`", err=True)
        return
    click.echo("Scan with an authenticator app (shown once):", err=True)
    click.echo(qr_text(started.totp_uri.expose()), err=True)
    _confirm(parts, code, _secret_input(None, "first TOTP code from the app"))


@operators.command("confirm")
def operators_confirm() -> None:
    """Complete enrolment: the code, then a first TOTP code (prompted for, or two lines of stdin)."""
    code = _secret_input(None, "enrolment code")
    _confirm(_components(), code, _secret_input(None, "TOTP code"))


def _confirm(parts: Components, code: Secret[str], totp: Secret[str]) -> None:
    try:
        actor = parts.enrolments.confirm(code, totp, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"id": actor.id, "username": actor.name, "enrolled": True}))


@operators.command("list")
def operators_list() -> None:
    """List operators, one JSON object a line (times in ISO 8601 UTC); never passwords or TOTP seeds."""
    found = _components().operators.list(HOST, _origin())
    for row in found:
        click.echo(json.dumps({name: _iso(value) for name, value in row.items()}))
    if not found:
        click.echo("no operators", err=True)


def _request_change(action: str, operator: str, session: str | None, totp: str | None) -> None:
    parts = _components()
    try:
        step_up = _step_up(parts, session, totp, "manage_operators")
        params = {"operator_id": parts.operators.id_of(operator)}
        found = parts.approvals.request(step_up, action, params, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps(found.public()))
    click.echo(f"pending: another admin runs `tokenvault approvals approve {found.id}`", err=True)


@operators.command("disable")
@click.argument("operator")
@_session_option
@_totp_option
def operators_disable(operator: str, session: str | None, totp: str | None) -> None:
    """Ask to disable OPERATOR (username or id): a second admin must approve (dual control)."""
    _request_change("disable_operator", operator, session, totp)


@operators.command("reenrol")
@click.argument("operator")
@_session_option
@_totp_option
def operators_reenrol(operator: str, session: str | None, totp: str | None) -> None:
    """Ask to reset OPERATOR's password and TOTP (dual control); prints your half of the new code."""
    parts = _components()
    try:
        step_up = _step_up(parts, session, totp, "manage_operators")
        first, half_hash = parts.enrolments.first_half()
        params = {"operator_id": parts.operators.id_of(operator), "enrolment_half": half_hash}
        found = parts.approvals.request(step_up, "reenrol_operator", params, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"enrolment_code_first_half": first.expose(), "approval": found.public()}))
    click.echo("give your half to the operator; the approving admin gives the other half", err=True)


@operators.command("enable")
@click.argument("operator")
@_session_option
@_totp_option
def operators_enable(operator: str, session: str | None, totp: str | None) -> None:
    """Ask to enable OPERATOR again: a second admin must approve (dual control)."""
    _request_change("enable_operator", operator, session, totp)


# -- sessions ----------------------------------------------------------------------------------

@click.group()
def auth() -> None:
    """Operators' sessions."""


@auth.command("login")
@click.option("--username", required=True)
@click.option("--password-stdin", is_flag=True, help="read the password, then the TOTP code, from stdin")
@_totp_option
def auth_login(username: str, password_stdin: bool, totp: str | None) -> None:
    """Log in with password + TOTP; prints {"session_token", "expires_at"} (15 minutes)."""
    password = Secret(sys.stdin.readline().rstrip("\n")) if password_stdin else _secret_input(None, "password")
    code = _secret_input(totp, "TOTP code")
    try:
        done = _components().operators.login(username, password, code, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"session_token": done.session.token.expose(), "expires_at": _iso(done.session.expires_at),
                           "operator": {"id": done.actor.id, "username": done.actor.name, "role": done.actor.role}}))


@auth.command("logout")
@_session_option
def auth_logout(session: str | None) -> None:
    """End the operator session (TOKENVAULT_SESSION or --session) at once."""
    parts = _components()
    try:
        actor = _as_operator(parts, session)
        parts.operators.logout(actor, Secret(session or ""), _origin())
    except VaultError as error:
        _fail(error)
    click.echo("logged out", err=True)


@auth.command("password")
@_session_option
@_totp_option
def auth_password(session: str | None, totp: str | None) -> None:
    """Change your password: current, then new (prompted, or two lines of stdin); every session ends."""
    parts = _components()
    try:
        step_up = _step_up(parts, session, totp, None)
        current = _secret_input(None, "current password")
        new = _secret_input(None, "new password")
        revoked = parts.operators.change_password(step_up, current, new, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({"changed": True, "sessions_revoked": revoked}))


@auth.command("reenrol")
@_session_option
@_totp_option
def auth_reenrol(session: str | None, totp: str | None) -> None:
    """A new authenticator: your password (prompted or stdin) resets your TOTP; prints your enrolment code."""
    parts = _components()
    try:
        step_up = _step_up(parts, session, totp, None)
        issued = parts.operators.reenrol_self(step_up, _secret_input(None, "password"), _origin())
    except VaultError as error:
        _fail(error)
    _print_code(issued, step_up.actor.name or step_up.actor.id)


# -- approvals ---------------------------------------------------------------------------------

@click.group()
def approvals() -> None:
    """Dual control: pending requests and their approval by a second operator."""


@approvals.command("list")
@click.option("--all", "everything", is_flag=True, help="also executed and expired requests")
@_session_option
def approvals_list(everything: bool, session: str | None) -> None:
    """Dual-control requests waiting for a second admin (with --all, also executed and expired ones)."""
    parts = _components()
    try:
        found = parts.approvals.list(_as_operator(parts, session), _origin(), pending_only=not everything)
    except VaultError as error:
        _fail(error)
    for item in found:
        click.echo(json.dumps(item.public()))
    if not found:
        click.echo("no pending approvals" if not everything else "no approvals", err=True)


@approvals.command("approve")
@click.argument("approval_id")
@_session_option
@_totp_option
def approvals_approve(approval_id: str, session: str | None, totp: str | None) -> None:
    """Approve APPROVAL_ID (not your own request); the action runs at once."""
    parts = _components()
    try:
        done = parts.approvals.approve(_step_up(parts, session, totp, None), approval_id, _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps({**done.public(), "shown_once": {k: v.expose() for k, v in done.shown_once.items()}}))
    if done.shown_once:
        click.echo("shown once: give the second half of the enrolment code to the operator yourself", err=True)


# -- policy ------------------------------------------------------------------------------------

def _load(path: Path | None) -> Policy:
    try:
        return load_policy(path or Settings.from_env().policy_path)
    except VaultError as error:
        _fail(error)


@click.group()
def policy() -> None:
    """Check and explain the access policy."""


@policy.command("check")
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="policy file (default: TOKENVAULT_POLICY, else the shipped default)")
def policy_check(path: Path | None) -> None:
    """Validate a policy file; exit 2 with the reason if it would refuse to start."""
    loaded = _load(path)
    click.echo(f"policy {loaded.source}: valid, {len(loaded.roles)} roles ({', '.join(loaded.roles)})")


@policy.command("explain")
@click.option("--role", required=True)
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False), default=None)
def policy_explain(role: str, path: Path | None) -> None:
    """What ROLE may do, one rule a row; anything not listed is denied."""
    loaded = _load(path)
    if not loaded.has_role(role):
        click.echo(f"error: role {role!r} is not in policy {loaded.source} (roles: {', '.join(loaded.roles)})",
                   err=True)
        sys.exit(2)
    click.echo(explain_table(loaded, role))


def explain_table(loaded: Policy, role: str) -> str:
    header = ("operation", "kinds", "purposes", "uses", "fields", "view")
    rows = []
    for rule in loaded.rules_of(role):
        for operation in rule.operations:
            rows.append((operation, ", ".join(rule.kinds) or "-", ", ".join(rule.purposes) or "-",
                         ", ".join(rule.uses) or "-",
                         ", ".join(rule.fields) or ("all" if operation == "detokenize" else "-"),
                         rule.view if operation == "detokenize" else "-"))
    if not rows:
        return f"role {role}: may do nothing (deny by default)"
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [f"role {role} ({loaded.source}); anything not listed is denied", ""]
    for row in (header, tuple("-" * w for w in widths), *rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
