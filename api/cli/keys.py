"""`tokenvault keys ...`: list, rotate (with a progress bar), resume, retire, re-encrypt, epoch, due."""

from __future__ import annotations

import getpass
import json
import os
import sys
from datetime import timedelta
from typing import Any

import click

from api.cli.context import command_components
from api.wiring import Components
from vault.audit.trail import Actor, Origin
from vault.errors import ValidationFailed, VaultError

__all__ = ["keys"]


def _parts() -> Components:
    return command_components()


def _actor() -> Actor:
    return Actor(id=f"cli:{getpass.getuser()}", role="admin")


def _origin() -> Origin:
    return Origin(request_id=f"cli-{os.getpid()}", source="localhost", user_agent="tokenvault-cli")


def _fail(error: VaultError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(2)


def _follow(parts: Components, job_id: str, batch: int) -> dict[str, Any]:
    """Run the job here, showing done/total, rate and ETA on stderr."""
    with click.progressbar(length=1, label=job_id, file=sys.stderr, show_pos=True) as bar:
        def progress(state: dict[str, Any]) -> None:
            bar.length = max(state["total"], 1)
            bar.update(state["done"] - bar.pos)
            eta = f"{state['eta_seconds']:.0f}s" if state["eta_seconds"] is not None else "-"
            waiting = state.get("waiting_for")
            bar.label = (f"{job_id} waiting for {waiting}" if waiting
                         else f"{job_id} {state['phase']} {state['rate']:.0f}/s eta {eta}")

        return parts.lifecycle.run(job_id, batch=batch, on_progress=progress)


@click.group()
def keys() -> None:
    """Key lifecycle for admins (PCI DSS 3.6, 3.7)."""


@keys.command("list")
def list_keys() -> None:
    """Every key level, with creation time, use counts and crypto-period status."""
    click.echo(json.dumps(_parts().lifecycle.inventory(_actor(), _origin()), indent=1))


@keys.command()
def due() -> None:
    """What is due or overdue for rotation."""
    found = _parts().lifecycle.due(_actor(), _origin())
    for item in found:
        click.echo(json.dumps(item))
    if not found:
        click.echo("nothing is due for rotation", err=True)


@keys.command()
@click.option("--domain-keys/--kek-only", default=True, show_default=True,
              help="also rotate the record domain keys and rewrap data keys under the new ones")
@click.option("--due-only", is_flag=True, help="rotate only if something is due (for a scheduler)")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True, help="rows per step")
def rotate(domain_keys: bool, due_only: bool, batch: int) -> None:
    """Rotate the KEK (and domain keys), then rewrap everything under the new versions."""
    parts = _parts()
    try:
        if due_only and not parts.lifecycle.due(_actor(), _origin()):
            click.echo(json.dumps({"rotated": False, "reason": "nothing due"}))
            return
        job_id = parts.lifecycle.start_rotation(_actor(), _origin(), domain_keys_too=domain_keys)
        click.echo(json.dumps(_follow(parts, job_id, batch)))
    except VaultError as error:
        _fail(error)


@keys.command()
@click.argument("job_id", required=False)
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True, help="rows per step")
def resume(job_id: str | None, batch: int) -> None:
    """Resume a job after a crash or restart (every unfinished one when no id is given)."""
    parts = _parts()
    try:
        jobs = [job_id] if job_id else parts.lifecycle.unfinished()
        for job in jobs:
            click.echo(json.dumps(_follow(parts, job, batch)))
        if not jobs:
            click.echo("no unfinished key job to resume", err=True)
    except VaultError as error:
        _fail(error)


@keys.command()
@click.option("--below", type=int, required=True, help="make KEK versions below this unusable")
def retire(below: int) -> None:
    """Raise the KEK's minimum decryption version; refused while anything still uses an older one."""
    try:
        click.echo(json.dumps(_parts().lifecycle.retire(_actor(), below, _origin())))
    except VaultError as error:
        _fail(error)


@keys.command()
@click.option("--domain-key", "domain_key", required=True, help="the compromised domain key id")
@click.option("--batch", type=click.IntRange(1, 10_000), default=200, show_default=True, help="rows per step")
def reencrypt(domain_key: str, batch: int) -> None:
    """Compromise response: new data keys and new ciphertext for everything under DOMAIN_KEY, then destroy it."""
    parts = _parts()
    try:
        job_id = parts.lifecycle.start_reencrypt(_actor(), domain_key, _origin())
        click.echo(json.dumps(_follow(parts, job_id, batch)))
    except VaultError as error:
        _fail(error)


EPOCH_DAYS_DEFAULT = 30  # the documented backup retention (README, Keys): a backup outlives no more than one epoch


@keys.command()
@click.option("--due-only", is_flag=True, help="open an epoch only if the last one is older than --every-days")
@click.option("--every-days", type=int, default=None,
              help=f"epoch length (default: TOKENVAULT_ERASURE_EPOCH_DAYS or {EPOCH_DAYS_DEFAULT})")
@click.option("--batch", type=click.IntRange(1, 10_000), default=1000, show_default=True, help="rows per step")
def epoch(due_only: bool, every_days: int | None, batch: int) -> None:
    """Erasure epoch: rewrap every live key under a new KEK version, then destroy the older versions.

    Afterwards, copies made before the epoch (dead tuples, WAL, backups) no longer open,
    including what was erased or corrected since the previous epoch. Resumable; for a scheduler.
    """
    parts = _parts()
    days = every_days if every_days is not None else int(os.environ.get(
        "TOKENVAULT_ERASURE_EPOCH_DAYS", EPOCH_DAYS_DEFAULT))
    if days < 1:
        _fail(ValidationFailed("every-days", "must be at least 1"))
    try:
        unfinished = [job for job in parts.lifecycle.unfinished() if parts.lifecycle.job_kind(job) == "epoch"]
        if unfinished:
            click.echo(json.dumps(_follow(parts, unfinished[0], batch)))
            return
        if due_only and not parts.lifecycle.epoch_due(timedelta(days=days)):
            click.echo(json.dumps({"epoch": False, "reason": f"last epoch less than {days} days ago"}))
            return
        job_id = parts.lifecycle.start_epoch(_actor(), _origin())
        click.echo(json.dumps(_follow(parts, job_id, batch)))
    except VaultError as error:
        _fail(error)
