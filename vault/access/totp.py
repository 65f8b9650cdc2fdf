"""Time-based one-time passwords (RFC 6238) for operators, each code accepted once.

A code is checked against the current 30-second step and one step either side (clock
drift). The step that matched is then claimed in `totp_uses`, whose primary key
(operator, step) refuses a second claim: a code seen once (at login, or at a
step-up) is refused afterwards, by every worker and host, because the database
decides. Claims commit with the login or step-up they belong to.

A row MAC cannot protect `totp_uses`: the attack is deleting a used step's row, which no
MAC sees. So each claim also records the step in `operators.totp_used_steps` (the steps
used that could still match: the current one and those after `now - DRIFT_STEPS`), which
the operator's row MAC covers: a used step is refused even if its `totp_uses` row is gone.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

import pyotp
from sqlalchemy import delete
from sqlalchemy.engine import Connection

from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import insert_ignoring_conflict, operators, totp_uses

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


def _steps(text: str | None) -> set[int]:
    return {int(part) for part in (text or "").split(",") if part.isdigit()}


def _text(steps: set[int]) -> str | None:
    return ",".join(str(step) for step in sorted(steps)) or None


def release_step(conn: Connection, operator_id: str, step: int, macs: RowMacs) -> None:
    """Give back a claimed step whose action did not run: the operator need not wait for the next code."""
    conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id, totp_uses.c.step == step))
    macs.update(conn, operators, operator_id, lambda row: {"totp_used_steps": _text(_steps(row["totp_used_steps"])
                                                                                    - {step})})


def claim_step(conn: Connection, operator_id: str, step: int, at: datetime, macs: RowMacs) -> bool:
    """Mark `step` used by this operator; False if it already was (a replayed code) or an equal or later
    step was (its `totp_uses` row may have been deleted). IntegrityFailure if the operator row was edited."""
    claimed = conn.execute(insert_ignoring_conflict(conn, totp_uses).returning(totp_uses.c.step),
                           {"operator_id": operator_id, "step": step, "used_at": at}).first()
    conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id,
                                         totp_uses.c.step < current_step(at) - _KEEP_STEPS))
    if claimed is None:
        return False
    replayed = False

    def spend(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal replayed
        live = {used for used in _steps(row["totp_used_steps"]) if used >= current_step(at) - DRIFT_STEPS}
        replayed = step in live
        return {"totp_used_steps": _text(live | {step})}

    return macs.update(conn, operators, operator_id, spend) and not replayed
