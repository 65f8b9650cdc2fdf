"""Enrolment: an operator sets their own password and TOTP with a one-time code, never handed credentials.

Creating an operator, or resetting one (forced or own re-enrolment), leaves the account with
no usable credentials: the password hash is "!" (it matches nothing) and the TOTP seed is a
random one nobody was shown. It gets a one-time enrolment code instead, valid for 24 hours by
default, stored only as a keyed hash (HMAC-SHA256 under the `auth` domain key, like API keys
and sessions). While a code is outstanding the operator can neither log in nor step up.

The new operator redeems the code in two calls, both unauthenticated and rate-limited like
login: `begin` (code + the password they choose, same rules as ever) answers a fresh TOTP seed
as an otpauth URI; `confirm` (code + a first valid TOTP code) proves the authenticator works,
claims that time step, and clears the code: single use. Until `confirm`, `begin` may be
called again (a new seed each time).

Split knowledge. When one admin files a change and a second approves it (dual control), the
code is made of two halves: the requester sees only the first, the approver only the second,
and the operator needs both. So neither admin alone can redeem it and become that operator
(the attack this module exists for: an admin who knows a colleague's credentials). The stored
hash binds the halves: HMAC(auth, "enrolment" | HMAC(auth, "half" | first) | second). The host
(`tokenvault operators create`) and an operator re-enrolling themselves get both halves.

Every step is audited (`enrol_begin`, `enrol`, denials with a reason); never a code, password
or seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.passwords import Passwords
from vault.access.policy import Policy
from vault.access.sessions import Sessions
from vault.access.totp import claim_step, matching_step, new_seed, provisioning_uri
from vault.audit.facts import seed_fingerprint
from vault.audit.trail import ANONYMOUS, Actor, AuditTrail, Origin
from vault.errors import NotFound, Unauthenticated, ValidationFailed, VaultError
from vault.keys.envelope import associated_data
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import data_keys, operators, totp_uses

__all__ = ["UNSET_PASSWORD", "HALF_LENGTH", "EnrolmentCode", "Enrolling", "Enrolments", "seed_aad", "seal_new_seed",
           "open_seed"]

UNSET_PASSWORD = "!"  # noqa: S105  # nosec B105 - a marker, not a password: no PHC string, nothing verifies
HALF_LENGTH = 32  # hex characters: 128 random bits per half


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EnrolmentCode:
    """What an issuer is shown once: the code (or, under dual control, the approver's half) and its expiry."""

    operator_id: str
    code: Secret[str]
    expires_at: datetime
    half: bool  # True: the second half only; the operator also needs the requester's first half


@dataclass(frozen=True)
class Enrolling:
    """Answer to `begin`: the account and the otpauth URI of its new TOTP seed (show once, never log)."""

    operator_id: str
    username: str
    totp_uri: Secret[str]


def seed_aad(operator_id: str, key_id: str) -> bytes:
    return associated_data("totp", operator=operator_id, key=key_id)


def seal_new_seed(conn: Connection, keys: KeyHierarchy, operator_id: str) -> tuple[Secret[str], dict[str, Any]]:
    """A new TOTP seed sealed under a new data key (inserted): the seed and the operator columns to set."""
    seed = new_seed()
    data_key = keys.new_data_key(conn, "totp", None)
    conn.execute(insert(data_keys), [data_key.row])
    sealed = data_key.cipher.seal(seed.expose().encode(), seed_aad(operator_id, data_key.id))
    return seed, {"totp_sealed": sealed, "totp_key_id": data_key.id}


def open_seed(conn: Connection, keys: KeyHierarchy, operator_id: str, key_id: str, sealed: bytes) -> Secret[str]:
    key_row = conn.execute(select(data_keys.c.id, data_keys.c.domain_key_id, data_keys.c.subject_id,
                                  data_keys.c.purpose, data_keys.c.wrapped)
                           .where(data_keys.c.id == key_id)).mappings().one()
    cipher = keys.open_data_keys(conn, [dict(key_row)])[key_id]
    return Secret(cipher.open(sealed, seed_aad(operator_id, key_id)).decode())


class Enrolments(AuditedOperations):
    """Issues enrolment codes (resetting credentials) and redeems them."""

    def __init__(self, *, engine: Engine, keys: KeyHierarchy, policy: Policy, trail: AuditTrail,
                 passwords: Passwords, sessions: Sessions, lifetime: timedelta = timedelta(hours=24),
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._keys = keys
        self._macs = RowMacs(keys)
        self._passwords = passwords
        self._sessions = sessions
        self.lifetime = lifetime

    # -- hashing -------------------------------------------------------------------------------

    def _mac(self, conn: Connection, label: bytes, data: bytes) -> bytes:
        return hmac.new(self._keys.hmac_key(conn, "auth").expose(), label + b"\x00" + data, hashlib.sha256).digest()

    def _half_hash(self, conn: Connection, first: str) -> bytes:
        return self._mac(conn, b"enrolment-half", first.encode())

    def _code_hash(self, conn: Connection, half_hash: bytes, second: str) -> bytes:
        return self._mac(conn, b"enrolment", half_hash + second.encode())

    def first_half(self) -> tuple[Secret[str], str]:
        """For a dual-control request: the requester's half, and its keyed hash (hex) for the request's params."""
        first = secrets.token_hex(HALF_LENGTH // 2)
        with self._engine.connect() as conn:
            return Secret(first), self._half_hash(conn, first).hex()

    # -- issuing -------------------------------------------------------------------------------

    def issue(self, conn: Connection, operator_id: str, *, first_half_hash: str | None = None) -> EnrolmentCode:
        """Reset the operator's credentials and sessions and give them a new code (in the caller's transaction).

        With `first_half_hash` (from `first_half`, filed with a dual-control request) only the second half
        is returned; without it, the whole code.
        """
        now = self._clock()
        old_key = conn.execute(select(operators.c.totp_key_id).where(operators.c.id == operator_id)).scalar()
        if old_key is None:
            raise NotFound("no such operator")
        second = secrets.token_hex(HALF_LENGTH // 2)
        if first_half_hash is None:
            first = secrets.token_hex(HALF_LENGTH // 2)
            half_hash, shown = self._half_hash(conn, first), Secret(first + second)
        else:
            try:
                half_hash = bytes.fromhex(first_half_hash)
            except ValueError:
                raise ValidationFailed("params", "first half hash is not hex") from None
            shown = Secret(second)
        _, sealed = seal_new_seed(conn, self._keys, operator_id)  # nobody is shown this seed
        expires_at = now + self.lifetime
        self._macs.update(conn, operators, operator_id, {
            "password_hash": UNSET_PASSWORD, "enrolment_hash": self._code_hash(conn, half_hash, second),
            "enrolment_expires_at": expires_at, "totp_used_steps": None, **sealed})
        conn.execute(delete(data_keys).where(data_keys.c.id == old_key))  # the old seed is shredded
        # Claimed steps (in both places) belong to the old seed; the new one's codes were never seen,
        # so none can be a replay.
        conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator_id))
        self._sessions.revoke_all(conn, operator_id, now)
        return EnrolmentCode(operator_id=operator_id, code=shown, expires_at=expires_at,
                             half=first_half_hash is not None)

    # -- redeeming -----------------------------------------------------------------------------

    def _pending(self, conn: Connection, code: Secret[str]) -> Any | None:
        """The operator row whose outstanding code this is, or None (malformed, unknown, expired)."""
        raw = code.expose().strip().lower()
        if len(raw) != 2 * HALF_LENGTH or any(c not in "0123456789abcdef" for c in raw):
            return None
        digest = self._code_hash(conn, self._half_hash(conn, raw[:HALF_LENGTH]), raw[HALF_LENGTH:])
        row = conn.execute(select(operators).where(operators.c.enrolment_hash == digest)).mappings().first()
        if row is not None:
            self._macs.check(conn, operators, row)  # an enrolment code written in by the database never enrols
        if row is None or row["enrolment_expires_at"] is None or row["enrolment_expires_at"] <= self._clock():
            return None
        return row

    def begin(self, code: Secret[str], password: Secret[str], origin: Origin) -> Enrolling:
        """Check the code, set the password the operator chose and a new TOTP seed; answer its URI."""
        try:
            self._passwords.check_rules(password)
        except ValidationFailed as error:
            self._audit_failure([self._event(ANONYMOUS, "enrol_begin", "denied", origin, error_code=error.code,
                                             detail="reason=password_rules")])
            raise
        password_hash = self._passwords.hash(password)  # slow on purpose: outside the transaction

        def work(conn: Connection) -> Enrolling | None:
            row = self._pending(conn, code)
            if row is None:
                return None
            seed, sealed = seal_new_seed(conn, self._keys, row["id"])
            self._macs.update(conn, operators, row["id"], {"password_hash": password_hash, **sealed})
            conn.execute(delete(data_keys).where(data_keys.c.id == row["totp_key_id"]))
            actor = Actor(id=row["id"], role=row["role"], name=row["username"])
            self._trail.record(conn, [self._event(actor, "enrol_begin", "allowed", origin, detail=(
                f"operator={row['id']} seed={seed_fingerprint(sealed['totp_key_id'])}"))])
            return Enrolling(operator_id=row["id"], username=row["username"],
                             totp_uri=provisioning_uri(seed, row["username"]))

        found: Enrolling | None = self._transaction(work)
        if found is None:
            raise self._refuse(ANONYMOUS, "enrol_begin", "unknown_or_expired_code", origin)
        return found

    def confirm(self, code: Secret[str], totp: Secret[str], origin: Origin) -> Actor:
        """A first valid TOTP code from the new seed completes enrolment and spends the code."""
        now = self._clock()

        def work(conn: Connection) -> tuple[Actor | None, str]:
            row = self._pending(conn, code)
            if row is None:
                return None, "unknown_or_expired_code"
            actor = Actor(id=row["id"], role=row["role"], name=row["username"])
            if row["password_hash"] == UNSET_PASSWORD:
                return actor, "not_begun"
            seed = open_seed(conn, self._keys, row["id"], row["totp_key_id"], row["totp_sealed"])
            step = matching_step(seed, totp, now)
            if step is None:
                return actor, "totp"
            if not claim_step(conn, row["id"], step, now, self._macs):
                return actor, "totp_replayed"
            spent = self._macs.update(conn, operators, row["id"],
                                      {"enrolment_hash": None, "enrolment_expires_at": None},
                                      operators.c.enrolment_hash == row["enrolment_hash"])
            if not spent:
                return actor, "code_spent"  # a concurrent confirm won
            self._trail.record(conn, [self._event(actor, "enrol", "allowed", origin)])
            return actor, ""

        outcome: tuple[Actor | None, str] = self._transaction(work)
        actor, failure = outcome
        if actor is None or failure:
            raise self._refuse(actor or ANONYMOUS, "enrol", failure, origin)
        return actor

    def _refuse(self, actor: Actor, action: str, reason: str, origin: Origin) -> VaultError:
        """One answer for every failure (which check failed is in the audit trail only)."""
        with contextlib.suppress(VaultError):
            self._audit_failure([self._event(actor, action, "denied", origin, error_code="unauthenticated",
                                             detail=f"reason={reason}")])
        return Unauthenticated("invalid or expired enrolment code")
