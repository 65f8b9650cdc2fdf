"""Human operators (admins, privacy officers, auditors): accounts, login with TOTP, step-up.

Nobody hands an operator their credentials: a new account gets a one-time enrolment code
(vault/access/enrolment.py) with which the operator sets their own password and TOTP, and it
cannot log in before. An operator changes their password, or re-enrols their TOTP, after a
step-up; an admin resets another operator only under dual control (`reenrol_operator`).

An operator logs in with a password (argon2id) and a TOTP code and gets a 15-minute
session token. An operator created by another operator starts disabled until a second one
approves `enable_operator`: otherwise one admin could create a second identity and approve
their own dual-control requests with it. Sensitive actions ask again for a fresh TOTP code (step-up); every code
is accepted once. Repeated failures lock the account for a time that doubles with each
further failure. Every attempt is audited (action `login` / `step_up`), never the
password or the code. Operator rows carry a row MAC (vault.keys.row_mac), checked on
login, step-up and every session use, and kept through every write.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from vault.access.enrolment import UNSET_PASSWORD, EnrolmentCode, Enrolments, seal_new_seed, seed_aad
from vault.access.operations import AuditedOperations
from vault.access.passwords import Passwords
from vault.access.policy import Policy
from vault.access.sessions import Session, Sessions
from vault.access.totp import claim_step, matching_step, release_step
from vault.audit.facts import check_operator, facts_of, seed_fingerprint
from vault.audit.trail import HOST, Actor, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import (
    Conflict,
    Forbidden,
    IntegrityFailure,
    NotFound,
    StepUpRequired,
    Unauthenticated,
    ValidationFailed,
    VaultError,
)
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import audit_events, data_keys, operators

__all__ = ["OPERATOR_ROLES", "HOST", "Lockout", "NewOperator", "Login", "StepUp", "OperatorRegistry"]

OPERATOR_ROLES = ("admin", "privacy_officer", "auditor")
_USERNAME = re.compile(r"^[a-z][a-z0-9._-]{1,63}$")
_ANONYMOUS = Actor(id="anonymous", role="none")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Lockout:
    """Lockout that protects, not punishes.

    Only a failure that proves the password (the right password with a wrong or replayed code,
    or a wrong step-up code from a live session) counts towards locking the account: after
    `threshold` of them in a row, lock for base, then twice as long each time, up to max.
    A wrong password only throttles that account from that source address: more than
    `per_source` in `source_seconds` and that source waits out the window, while the
    operator logs in from anywhere else. Anonymous failures cannot lock anyone out.
    """

    threshold: int = 5
    base_seconds: int = 60
    max_seconds: int = 3600
    per_source: int = 5
    source_seconds: int = 60

    def duration(self, failures: int) -> timedelta | None:
        if failures < self.threshold:
            return None
        doublings = min(failures - self.threshold, 20)
        return timedelta(seconds=min(self.max_seconds, self.base_seconds * 2**doublings))


@dataclass(frozen=True)
class NewOperator:
    """What `create` hands back: no credentials. Created on the host, the enrolment code (shown once)."""

    id: str
    username: str
    role: str
    active: bool
    enrolment: EnrolmentCode | None


@dataclass(frozen=True)
class Login:
    actor: Actor
    session: Session


@dataclass(frozen=True)
class StepUp:
    """Proof that `actor` has just given a fresh TOTP code: what sensitive actions take."""

    actor: Actor
    at: datetime
    step: int | None = None  # the TOTP step it spent: given back if the action it authorised did not run


class OperatorRegistry(AuditedOperations):
    """Operator accounts, their logins, sessions and step-ups."""

    def __init__(
        self,
        *,
        engine: Engine,
        keys: KeyHierarchy,
        policy: Policy,
        trail: AuditTrail,
        passwords: Passwords,
        sessions: Sessions,
        enrolments: Enrolments,
        lockout: Lockout = Lockout(),
        clock: Callable[[], datetime] = _now,
    ) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._keys = keys
        self._macs = RowMacs(keys)
        self._passwords = passwords
        self._sessions = sessions
        self._enrolments = enrolments
        self._lockout = lockout

    # -- accounts ------------------------------------------------------------------------------

    def create(self, actor: Actor, username: str, role: str, origin: Origin) -> NewOperator:
        """A new operator with no usable credentials.

        Created by HOST (the CLI, how the first admin comes to be) it is active at once and its enrolment code
        is returned, for the host's terminal. Created by an operator it stays disabled, with no code, until
        another operator approves `enable_operator` (dual control), which issues the code in two halves
        (see vault/access/enrolment.py): the creator never holds the whole code.
        """
        if actor != HOST:
            self._require(actor, "manage_operators", "create_operator", origin)
        if not _USERNAME.match(username):
            raise ValidationFailed("username", "must be 2 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter")
        refuse_pan("username", username)
        if role not in OPERATOR_ROLES or not self._policy.has_role(role):
            raise ValidationFailed("role", f"must be one of {', '.join(OPERATOR_ROLES)} and defined in the policy")
        operator_id = f"op_{secrets.token_hex(8)}"
        active = actor == HOST

        def work(conn: Connection) -> EnrolmentCode | None:
            if conn.execute(select(operators.c.id).where(operators.c.username == username)).first() is not None:
                raise Conflict("username already taken")
            _, sealed = seal_new_seed(conn, self._keys, operator_id)  # a placeholder nobody is shown
            self._macs.insert(conn, operators, {
                "id": operator_id, "username": username, "role": role, "password_hash": UNSET_PASSWORD,
                "failed_attempts": 0, "locked_until": None, "enrolment_hash": None, "enrolment_expires_at": None,
                "created_at": self._clock(), "disabled_at": None if active else self._clock(), **sealed})
            enrolment = self._enrolments.issue(conn, operator_id) if active else None
            self._trail.record(conn, [self._event(actor, "create_operator", "allowed", origin,
                                                  detail=f"operator={operator_id} role={role} active={active} "
                                                         f"seed={self._seed_of(conn, operator_id)}")])
            return enrolment

        enrolment: EnrolmentCode | None = self._audited(actor, "create_operator", origin, work)
        return NewOperator(id=operator_id, username=username, role=role, active=active, enrolment=enrolment)

    def list(self, actor: Actor, origin: Origin) -> list[dict[str, Any]]:
        if actor != HOST:
            self._require(actor, "manage_operators", "list_operators", origin)

        def work(conn: Connection) -> list[dict[str, Any]]:
            rows = conn.execute(select(operators.c.id, operators.c.username, operators.c.role, operators.c.created_at,
                                       operators.c.disabled_at, operators.c.locked_until,
                                       operators.c.enrolment_expires_at)
                                .order_by(operators.c.created_at, operators.c.username)).mappings()
            found = [dict(row) for row in rows]
            self._trail.record(conn, [self._event(actor, "list_operators", "allowed", origin,
                                                  detail=f"returned={len(found)}")])
            return found

        result: list[dict[str, Any]] = self._audited(actor, "list_operators", origin, work)
        return result

    def id_of(self, username_or_id: str) -> str:
        """The operator id for a username or id (for the CLI); NotFound otherwise."""
        with self._engine.connect() as conn:
            found = conn.execute(select(operators.c.id).where(
                (operators.c.username == username_or_id) | (operators.c.id == username_or_id))).scalar()
        if found is None:
            raise NotFound("no such operator")
        return str(found)

    # -- login, sessions -----------------------------------------------------------------------

    def _account(self, conn: Connection, condition: Any) -> tuple[Any, Secret[str]] | None:
        """The row of the operator matching `condition`, and its unsealed TOTP seed."""
        row = conn.execute(
            select(operators, data_keys.c.domain_key_id, data_keys.c.subject_id, data_keys.c.purpose,
                   data_keys.c.wrapped)
            .join(data_keys, data_keys.c.id == operators.c.totp_key_id)
            .where(condition)
        ).mappings().first()
        if row is None:
            return None
        self._macs.check(conn, operators, row)
        if row["disabled_at"] is None:  # a pre-disable copy restored must not log in
            check_operator(facts_of(conn, self._keys, [f"operator:{row['id']}"]), row)
        key_row = {"id": row["totp_key_id"], "domain_key_id": row["domain_key_id"], "subject_id": row["subject_id"],
                   "purpose": row["purpose"], "wrapped": row["wrapped"]}
        cipher = self._keys.open_data_keys(conn, [key_row], ("totp",))[row["totp_key_id"]]
        seed = cipher.open(row["totp_sealed"], seed_aad(row["id"], row["totp_key_id"]))
        return row, Secret(seed.decode())

    def login(self, username: str, password: Secret[str], code: Secret[str], origin: Origin) -> Login:
        """A session for a correct password and an unused TOTP code; Unauthenticated otherwise."""
        now = self._clock()
        found = None
        if _USERNAME.match(username):
            try:
                found = self._transaction(lambda conn: self._account(conn, operators.c.username == username))
            except IntegrityFailure as error:
                raise self._deny(_ANONYMOUS, "login", origin, error) from None
        failure: str | None = None
        step: int | None = None
        if found is None:
            self._passwords.verify(None, password)
            failure = "unknown_user"
        else:
            row, seed = found
            if row["disabled_at"] is not None:
                self._passwords.verify(None, password)
                failure = "disabled"
            elif row["enrolment_hash"] is not None:
                self._passwords.verify(None, password)
                failure = "not_enrolled"
            elif row["locked_until"] is not None and row["locked_until"] > now:
                self._passwords.verify(None, password)  # same time as any other answer
                failure = "locked"
            elif self._transaction(lambda conn: self._source_throttled(conn, row["id"], origin, now)):
                self._passwords.verify(None, password)
                failure = "throttled"
            elif not self._passwords.verify(row["password_hash"], password):
                failure = "password"
            else:
                step = matching_step(seed, code, now)
                failure = "totp" if step is None else None
        if failure is None and found is not None and step is not None:
            row = found[0]
            rehash = self._passwords.hash(password) if self._passwords.needs_rehash(row["password_hash"]) else None
            actor = Actor(id=row["id"], role=row["role"], name=row["username"])
            opened = self._transaction(lambda conn: self._open_session(conn, actor, step, rehash, now, origin))
            if isinstance(opened, Session):
                return Login(actor=actor, session=opened)
            failure = opened
        self._login_failed(found[0] if found else None, failure or "unknown", now, origin)
        raise Unauthenticated("invalid credentials")

    def _open_session(self, conn: Connection, actor: Actor, step: int, rehash: str | None, now: datetime,
                      origin: Origin) -> Session | str:
        """The new session, or why none was opened (`disabled`, `totp_replayed`)."""
        values: dict[str, Any] = {"failed_attempts": 0, "locked_until": None}
        if rehash is not None:
            values["password_hash"] = rehash
        # Lock rule (issue #17): the operator row first (FOR UPDATE, still enabled and enrolled), then the
        # session. The checks in `login` ran in an earlier transaction; a disable (same row lock, then
        # `revoke_all`) acknowledged meanwhile must not be followed by a session it never saw.
        usable = select(operators.c.id).where(operators.c.id == actor.id, operators.c.disabled_at.is_(None),
                                              operators.c.enrolment_hash.is_(None))
        if conn.execute(usable.with_for_update() if conn.dialect.name == "postgresql" else usable).first() is None:
            return "disabled"
        if not claim_step(conn, actor.id, step, now, self._macs):
            return "totp_replayed"
        self._macs.update(conn, operators, actor.id, values)
        session = self._sessions.issue(conn, actor.id, now)
        self._trail.record(conn, [self._event(actor, "login", "allowed", origin, detail=f"session={session.id}")])
        return session

    def _login_failed(self, row: Any, reason: str, now: datetime, origin: Origin) -> None:
        """Count the failure (locking when due) and audit it, in one transaction."""
        actor = Actor(id=row["id"], role=row["role"]) if row is not None else _ANONYMOUS

        def work(conn: Connection) -> None:
            detail = f"reason={reason}"
            if row is not None and reason in ("totp", "totp_replayed"):
                detail += self._count_failure(conn, row["id"], now)  # the password was right: lock
            self._trail.record(conn, [self._event(actor, "login", "denied", origin, error_code="unauthenticated",
                                                  detail=detail)])

        with contextlib.suppress(VaultError):
            self._transaction(work)

    def _source_throttled(self, conn: Connection, operator_id: str, origin: Origin, now: datetime) -> bool:
        """Too many wrong passwords for this account from this source lately (counted from the trail)."""
        since = now - timedelta(seconds=self._lockout.source_seconds)
        wrong = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.actor == operator_id, audit_events.c.at > since, audit_events.c.action == "login",
            audit_events.c.outcome == "denied", audit_events.c.source == origin.source,
            audit_events.c.detail == "reason=password")).scalar()
        return int(wrong or 0) >= self._lockout.per_source

    def _count_failure(self, conn: Connection, operator_id: str, now: datetime) -> str:
        counted: list[tuple[int, timedelta | None]] = []

        def bump(row: dict[str, Any]) -> dict[str, Any]:
            failures = int(row["failed_attempts"]) + 1
            lock = self._lockout.duration(failures)
            counted.append((failures, lock))
            return {"failed_attempts": failures, **({"locked_until": now + lock} if lock is not None else {})}

        # Row locked, MAC checked, counter raised, re-MACed: correct across instances at READ COMMITTED.
        self._macs.update(conn, operators, operator_id, bump)
        if not counted:
            return ""
        failures, lock = counted[0]
        if lock is None:
            return f" failures={failures}"
        return f" failures={failures} locked_seconds={int(lock.total_seconds())}"

    def authenticate(self, token: Secret[str], origin: Origin) -> Actor:
        """The operator behind a live session token; a failure is audited, then Unauthenticated."""
        now = self._clock()
        try:
            row = self._transaction(lambda conn: self._sessions.find(conn, token, now))
        except IntegrityFailure as failure:
            raise self._deny(_ANONYMOUS, "authenticate", origin, failure, detail="session") from None
        if row is None or not self._policy.has_role(row.role):
            refused = Unauthenticated("invalid credentials")
            self._trail.note_failed_authentication(self._engine, origin, refused.code, detail="session")
            raise refused
        return Actor(id=row.operator_id, role=row.role, name=row.username)

    def logout(self, actor: Actor, token: Secret[str], origin: Origin) -> None:
        """Revoke the session this token belongs to (it must be the caller's own)."""
        now = self._clock()

        def work(conn: Connection) -> None:
            row = self._sessions.find(conn, token, now)
            if row is None or row.operator_id != actor.id:
                raise Forbidden("only an operator's own session can be logged out")
            self._sessions.revoke(conn, row.id, now)
            self._trail.record(conn, [self._event(actor, "logout", "allowed", origin, detail=f"session={row.id}")])

        self._audited(actor, "logout", origin, work)

    # -- step-up -------------------------------------------------------------------------------

    def step_up(self, actor: Actor, code: Secret[str] | None, origin: Origin, *,
                operation: str | None = None) -> StepUp:
        """Check a fresh TOTP code from a logged-in operator before a sensitive action.

        With `operation`, the role must also be granted it (403 before any code is tried).
        """
        detail = f"operation={operation}" if operation else None
        if operation is not None:
            self._require(actor, operation, "step_up", origin, detail=detail)
        now = self._clock()
        try:
            found = self._transaction(lambda conn: self._account(conn, operators.c.id == actor.id))
        except IntegrityFailure as error:
            raise self._deny(actor, "step_up", origin, error, detail=detail) from None
        if found is None or found[0]["disabled_at"] is not None or found[0]["enrolment_hash"] is not None:
            raise self._deny(actor, "step_up", origin, Forbidden("step-up needs an operator session"), detail=detail)
        row, seed = found
        failure: str | None = None
        step: int | None = None
        if row["locked_until"] is not None and row["locked_until"] > now:
            failure = "locked"
        elif code is None or not code.expose():
            failure = "missing"
        else:
            step = matching_step(seed, code, now)
            failure = "totp" if step is None else None
        if step is not None:
            claimed = step

            def work(conn: Connection) -> bool:
                # As at login: the row still enabled (locked) before the code is claimed (issue #17). FOR UPDATE,
                # not FOR SHARE: claiming writes this row (its used steps), and two step-ups holding a shared
                # lock would deadlock on that write.
                usable = select(operators.c.id).where(operators.c.id == actor.id, operators.c.disabled_at.is_(None),
                                                      operators.c.enrolment_hash.is_(None))
                if conn.execute(usable.with_for_update() if conn.dialect.name == "postgresql"
                                else usable).first() is None:
                    raise Forbidden("step-up needs an operator session")
                if not claim_step(conn, actor.id, claimed, now, self._macs):
                    return False
                self._trail.record(conn, [self._event(actor, "step_up", "allowed", origin, detail=detail)])
                return True

            try:
                accepted = self._transaction(work)
            except Forbidden as error:  # disabled meanwhile: denied and audited like any refused step-up
                raise self._deny(actor, "step_up", origin, error, detail=detail) from None
            if accepted:
                return StepUp(actor=actor, at=now, step=claimed)
            failure = "totp_replayed"

        def denied(conn: Connection) -> None:
            reason = f"reason={failure}"
            if failure in ("totp", "totp_replayed"):
                reason += self._count_failure(conn, actor.id, now)
            self._trail.record(conn, [self._event(actor, "step_up", "denied", origin, error_code="step_up_required",
                                                  detail=" ".join(filter(None, [detail, reason])))])

        with contextlib.suppress(VaultError):
            self._transaction(denied)
        raise StepUpRequired("a fresh TOTP code is required")

    def release_step_up(self, step_up: StepUp, origin: Origin) -> None:
        """The action this step-up authorised failed and changed nothing: its code is not spent.

        A code is spent only when the action it authorises runs; the release is audited.
        """
        step = step_up.step
        if step is None:
            return

        def work(conn: Connection) -> None:
            release_step(conn, step_up.actor.id, step, self._macs)
            self._trail.record(conn, [self._event(step_up.actor, "step_up_released", "allowed", origin)])

        with contextlib.suppress(VaultError):
            self._transaction(work)

    # -- operator management under dual control (see vault/access/approvals.py) -----------------------

    def check_disable(self, conn: Connection, params: dict[str, Any]) -> None:
        """At request time: the operator to disable exists and is active."""
        found = conn.execute(select(operators.c.id).where(operators.c.id == params.get("operator_id"),
                                                          operators.c.disabled_at.is_(None))).first()
        if found is None:
            raise NotFound("no such active operator")

    def check_enable(self, conn: Connection, params: dict[str, Any]) -> None:
        """At request time: the operator to enable exists and is disabled (or awaiting activation)."""
        found = conn.execute(select(operators.c.id).where(operators.c.id == params.get("operator_id"),
                                                          operators.c.disabled_at.is_not(None))).first()
        if found is None:
            raise NotFound("no such disabled operator")

    def run_enable(self, conn: Connection, actor: Actor, params: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Once approved: the operator may log in (a lockout, if any, is cleared).

        For an operator created over HTTP the request carries the hash of the creator's half of the
        enrolment code; the approver gets the second half (shown once, never stored).
        """
        operator_id = str(params["operator_id"])
        changed = self._macs.update(conn, operators, operator_id,
                                    {"disabled_at": None, "failed_attempts": 0, "locked_until": None},
                                    operators.c.disabled_at.is_not(None))
        if not changed:
            raise Conflict("operator already enabled")
        result: dict[str, Any] = {"operator_id": operator_id}
        if "enrolment_half" in params:
            result.update(self._second_half(conn, operator_id, str(params["enrolment_half"])))
        seed = f" seed={self._seed_of(conn, operator_id)}" if "enrolment_half" in params else ""
        self._trail.record(conn, [self._event(actor, "enable_operator", "allowed", origin,
                                              detail=f"operator={operator_id} enrolment={'enrolment_half' in params}"
                                                     + seed)])
        return result

    @staticmethod
    def _seed_of(conn: Connection, operator_id: str) -> str:
        """The fingerprint of the operator's current TOTP seed key, for the event that gave it (vault.audit.facts)."""
        return seed_fingerprint(str(conn.execute(select(operators.c.totp_key_id)
                                                 .where(operators.c.id == operator_id)).scalar_one()))

    def _second_half(self, conn: Connection, operator_id: str, first_half_hash: str) -> dict[str, Any]:
        issued = self._enrolments.issue(conn, operator_id, first_half_hash=first_half_hash)
        return {"enrolment_code_second_half": issued.code, "enrolment_expires_at": issued.expires_at.isoformat()}

    # -- credentials: enrolment codes, password changes, re-enrolment -----------------------------

    def check_reenrol(self, conn: Connection, params: dict[str, Any]) -> None:
        """At request time: the operator exists and the request carries the requester's half of the code."""
        found = conn.execute(select(operators.c.id).where(operators.c.id == params.get("operator_id"))).first()
        if found is None:
            raise NotFound("no such operator")
        if not isinstance(params.get("enrolment_half"), str):
            raise ValidationFailed("params", "a re-enrolment needs the requester's half of the code")

    def run_reenrol(self, conn: Connection, actor: Actor, params: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Once approved: password, TOTP and sessions are void; the approver gets the code's second half."""
        operator_id = str(params["operator_id"])
        result = {"operator_id": operator_id, **self._second_half(conn, operator_id, str(params["enrolment_half"]))}
        self._trail.record(conn, [self._event(actor, "reenrol_operator", "allowed", origin,
                                              detail=f"operator={operator_id} "
                                                     f"seed={self._seed_of(conn, operator_id)}")])
        return result

    def reissue(self, operator: str, origin: Origin) -> EnrolmentCode:
        """On the host only (break glass, e.g. the last admin lost their authenticator): reset, whole code."""
        operator_id = self.id_of(operator)

        def work(conn: Connection) -> EnrolmentCode:
            issued = self._enrolments.issue(conn, operator_id)
            self._trail.record(conn, [self._event(HOST, "reenrol_operator", "allowed", origin,
                                                  detail=f"operator={operator_id} by=host "
                                                         f"seed={self._seed_of(conn, operator_id)}")])
            return issued

        issued: EnrolmentCode = self._audited(HOST, "reenrol_operator", origin, work)
        return issued

    def _check_password(self, step_up: StepUp, password: Secret[str], action: str, origin: Origin) -> None:
        """The current password too: a stolen session plus one shoulder-surfed code must not be enough."""
        actor = step_up.actor
        found = self._transaction(lambda conn: conn.execute(
            select(operators.c.password_hash).where(operators.c.id == actor.id)).scalar())
        if not self._passwords.verify(found, password):
            raise self._deny(actor, action, origin, Unauthenticated("invalid credentials"), detail="reason=password")

    def change_password(self, step_up: StepUp, current: Secret[str], new: Secret[str], origin: Origin) -> int:
        """The operator's own password (after a step-up); every session ends. Returns how many did."""
        actor = step_up.actor
        self._check_password(step_up, current, "change_password", origin)
        self._passwords.check_rules(new)
        password_hash = self._passwords.hash(new)

        def work(conn: Connection) -> int:
            self._macs.update(conn, operators, actor.id, {"password_hash": password_hash})
            revoked = self._sessions.revoke_all(conn, actor.id, self._clock())
            self._trail.record(conn, [self._event(actor, "change_password", "allowed", origin,
                                                  detail=f"sessions_revoked={revoked}")])
            return revoked

        revoked: int = self._audited(actor, "change_password", origin, work)
        return revoked

    def reenrol_self(self, step_up: StepUp, password: Secret[str], origin: Origin) -> EnrolmentCode:
        """A new authenticator: the operator's own credentials reset and a whole code for them (after a step-up)."""
        actor = step_up.actor
        self._check_password(step_up, password, "reenrol_self", origin)

        def work(conn: Connection) -> EnrolmentCode:
            issued = self._enrolments.issue(conn, actor.id)
            self._trail.record(conn, [self._event(actor, "reenrol_self", "allowed", origin,
                                                  detail=f"operator={actor.id} seed={self._seed_of(conn, actor.id)}")])
            return issued

        issued: EnrolmentCode = self._audited(actor, "reenrol_self", origin, work)
        return issued

    def run_disable(self, conn: Connection, actor: Actor, params: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Once approved: disable the operator and end every session it has."""
        now = self._clock()
        operator_id = str(params["operator_id"])
        changed = self._macs.update(conn, operators, operator_id, {"disabled_at": now},
                                    operators.c.disabled_at.is_(None))
        if not changed:
            raise Conflict("operator already disabled")
        revoked = self._sessions.revoke_all(conn, operator_id, now)
        self._trail.record(conn, [self._event(actor, "disable_operator", "allowed", origin,
                                              detail=f"operator={operator_id} sessions_revoked={revoked}")])
        return {"operator_id": operator_id, "sessions_revoked": revoked}

