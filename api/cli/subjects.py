"""`tokenvault subjects ...` and `tokenvault transfer ...`: privacy work from the command line.

The CLI runs with the service's own keys, so whoever runs it already holds the
vault; it acts as a privacy officer named after the local user, and is audited.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

import click

from api.cli.context import command_components
from api.wiring import Components
from vault.audit.trail import Actor, Origin
from vault.errors import VaultError
from vault.privacy.transfer import TransferService

__all__ = ["subjects", "transfer"]


def _parts() -> Components:
    return command_components()


def _actor() -> Actor:
    return Actor(id=f"cli:{getpass.getuser()}", role="privacy_officer")


def _origin() -> Origin:
    return Origin(request_id=f"cli-{os.getpid()}", source="localhost", user_agent="tokenvault-cli")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _fail(error: VaultError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


@click.group()
def subjects() -> None:
    """Customers' requests: export, the requests register."""


@subjects.command("export")
@click.argument("subject_id")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def export(subject_id: str, out: Path) -> None:
    """Write everything held on SUBJECT_ID as JSON (mode 0600): access and portability requests."""
    try:
        document = _parts().privacy.export(_actor(), subject_id, _origin())
    except VaultError as error:
        _fail(error)
    _write_private(out, json.dumps(document, indent=1, ensure_ascii=False))
    click.echo(f"wrote {out}", err=True)


@subjects.command("requests")
@click.option("--due", "within_days", type=int, default=None, is_flag=False, flag_value=7,
              help="only requests due within N days (default 7 when given without a value)")
def requests(within_days: int | None) -> None:
    """Open requests, soonest due first (GDPR: one month to answer)."""
    found = _parts().privacy.requests_due(_actor(), _origin(), within_days)
    for row in found:
        click.echo(json.dumps(row))
    if not found:
        click.echo("no open requests" + (f" due within {within_days} days" if within_days is not None else ""),
                   err=True)


@click.group()
def transfer() -> None:
    """Business transfer: sealed bundles of chosen subjects for an acquirer."""


@transfer.command("keygen")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="private key file (PEM, 0600); the public key goes to OUT.pub")
def keygen(out: Path) -> None:
    """An X25519 key pair for the receiving vault."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    _write_private(out, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode())
    Path(str(out) + ".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    click.echo(f"wrote the private key to {out} (0600) and the public key to {out}.pub", err=True)


def _service(parts: Components) -> TransferService:
    return TransferService(engine=parts.engine, policy=parts.policy, trail=parts.trail, tokens_service=parts.tokens)


@transfer.command("export")
@click.option("--recipient-public-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
@click.option("--subjects", "subject_list", required=True, help="comma-separated subject ids")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--approval", "approval_id", required=True,
              help="an executed transfer_export approval (POST /v1/transfers, approved by a second officer)")
def transfer_export(recipient_public_key: Path, subject_list: str, out: Path, approval_id: str) -> None:
    """Seal the chosen subjects for the acquirer; unreadable without its private key. Dual control, once."""
    parts = _parts()
    try:
        bundle = _service(parts).export(_actor(), [s for s in subject_list.split(",") if s],
                                        recipient_public_key.read_bytes(), approval_id, _origin())
    except VaultError as error:
        _fail(error)
    _write_private(out, json.dumps(bundle))
    click.echo(json.dumps(bundle["manifest"]["counts"]))


@transfer.command("import")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--private-key", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True)
def transfer_import(bundle: Path, private_key: Path) -> None:
    """Load a bundle into this vault, keeping its tokens."""
    parts = _parts()
    actor = Actor(id=f"cli:{getpass.getuser()}", role="checkout")
    try:
        result = _service(parts).import_bundle(actor, json.loads(bundle.read_text()), private_key.read_bytes(),
                                               _origin())
    except VaultError as error:
        _fail(error)
    click.echo(json.dumps(result))
