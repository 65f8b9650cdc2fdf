"""Time-based one-time passwords (RFC 6238) for operators, each code accepted once.

A code is checked against the current 30-second step and one step either side (clock
drift). The step that matched is then claimed in `totp_uses`, whose primary key
(operator, step) refuses a second claim: a code seen once (at login, or at a
step-up) is refused afterwards, by every worker and host, because the database
decides. Claims commit with the login or step-up they belong to.
"""

from __future__ import annotations

import hmac
from datetime import datetime

import pyotp
from sqlalchemy import delete
from sqlalchemy.engine import Connection

from vault.secret import Secret
from vault.storage.schema import insert_ignoring_conflict, totp_uses

__all__ = ["STEP_SECONDS", "new_seed", "provisioning_uri", "matching_step", "claim_step", "current_step"]

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
ISSUER = "TokenVault"
_KEEP_STEPS = 20  # claims older than this (10 minutes) can never match again: pruned


def new_seed() -> Secret[str]:
    """160 random bits, base32, as authenticator apps expect."""
    return Secret(pyotp.random_base32())


def provisioning_uri(seed: Secret[str], username: str) -> Secret[str]:
    """The otpauth:// URI (holds the seed: show it once, never log it)."""
    return Secret(pyotp.TOTP(seed.expose(), digits=DIGITS, interval=STEP_SECONDS)
                  .provisioning_uri(name=username, issuer_name=ISSUER))


def current_step(at: datetime) -> int:
    return int(at.timestamp()) // STEP_SECONDS


def matching_step(seed: Secret[str], code: Secret[str] | None, at: datetime) -> int | None:
    """The time step `code` belongs to, within the drift window, or None."""
    raw = code.expose().strip() if code is not None else ""
    if len(raw) != DIGITS or not raw.isascii() or not raw.isdigit():
        return None
    totp = pyotp.TOTP(seed.expose(), digits=DIGITS, interval=STEP_SECONDS)
    now = current_step(at)
    found = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):  # every step compared: constant time
        if hmac.compare_digest(totp.generate_otp(step), raw):
            found = step
    return found


def release_step(conn: Connection, operator_id: str, step: int) -> None:
    """Give back a claimed step whose action did not run: the operator need not wait for the next code."""
    conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id, totp_uses.c.step == step))


def claim_step(conn: Connection, operator_id: str, step: int, at: datetime) -> bool:
    """Mark `step` used by this operator; False if it already was (a replayed code)."""
    claimed = conn.execute(insert_ignoring_conflict(conn, totp_uses).returning(totp_uses.c.step),
                           {"operator_id": operator_id, "step": step, "used_at": at}).first()
    conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id,
                                         totp_uses.c.step < current_step(at) - _KEEP_STEPS))
    return claimed is not None
