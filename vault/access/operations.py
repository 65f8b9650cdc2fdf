"""What every audited use case shares: one transaction, audit events, and denials.

The operation and its audit events commit together; a denial or an error is audited
in a transaction of its own after the operation's work rolled back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from vault.access.policy import Policy
from vault.audit.alerts import integrity_event
from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin
from vault.errors import Forbidden, IntegrityFailure, StorageUnavailable, VaultError
from vault.storage.schema import operators

__all__ = ["AuditedOperations"]


def _now() -> datetime:
    return datetime.now(UTC)


OPERATOR_ID_PREFIX = "op_"


def refuse_if_disabled(conn: Connection, operator_id: str) -> None:
    """Forbidden if the operator's row says disabled, read under a shared lock until this transaction ends.

    The session was checked in an earlier transaction: a disable acknowledged since is seen here, and
    one still running (it holds the row FOR UPDATE) waits for this operation to commit first, so no
    operator acts after their disable was acknowledged (issue #17). Narrowing only: a row edited to
    look enabled still fails its MAC at the next authentication; a missing row is the session's concern.
    """
    query = select(operators.c.disabled_at).where(operators.c.id == operator_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    row = conn.execute(query).first()
    if row is not None and row.disabled_at is not None:
        raise Forbidden("the operator's account is disabled")


class AuditedOperations:
    """Base for services whose every call is authorised by the policy and audited."""

    # Whether `_audited` re-checks, in the operation's own transaction, that an operator actor is not
    # disabled. Approvals check their approver at the end instead (their lock order: request, then operator).
    gate_operators = True

    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail,
                 clock: Callable[[], datetime] = _now) -> None:
        self._engine = engine
        self._policy = policy
        self._trail = trail
        self._clock = clock

    def _event(self, actor: Actor, action: str, outcome: str, origin: Origin, **fields: Any) -> AuditEvent:
        return AuditEvent(at=self._clock(), actor=actor.id, role=actor.role, action=action, outcome=outcome,
                          origin=origin, **fields)

    def _transaction(self, work: Callable[[Connection], Any]) -> Any:
        """Run `work` in one transaction; database failures read as StorageUnavailable."""
        try:
            with self._engine.begin() as conn:
                return work(conn)
        except VaultError:
            raise
        except OperationalError as exc:
            raise StorageUnavailable("database unavailable") from exc
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database error") from exc

    def _audit_failure(self, events: Sequence[AuditEvent]) -> None:
        """Record denials and errors after their transaction rolled back.

        If even this write fails, the caller still gets an error and no data.
        """
        with contextlib.suppress(VaultError):
            self._transaction(lambda conn: self._trail.record(conn, events))

    def _deny(self, actor: Actor, action: str, origin: Origin, error: VaultError, **fields: Any) -> VaultError:
        events = [self._event(actor, action, "denied", origin, error_code=error.code, **fields)]
        if isinstance(error, IntegrityFailure):
            events.append(integrity_event(self._clock(), actor, origin, error))
        self._audit_failure(events)
        return error

    def _require(self, actor: Actor, operation: str, action: str, origin: Origin, **fields: Any) -> None:
        """Deny by default: Forbidden (audited) unless the policy grants `operation`."""
        if not self._policy.may_use(actor.role, operation):
            raise self._deny(actor, action, origin, Forbidden(f"role may not {operation}"), **fields)

    def authorise(self, actor: Actor, operation: str, action: str, origin: Origin) -> None:
        """For callers that must refuse before reading a request body: same as `_require`."""
        self._require(actor, operation, action, origin)

    def _gated(self, actor: Actor, work: Callable[[Connection], Any]) -> Callable[[Connection], Any]:
        """`work`, after `refuse_if_disabled` in the same transaction when the actor is an operator."""

        def gated(conn: Connection) -> Any:
            if self.gate_operators and actor.id.startswith(OPERATOR_ID_PREFIX):
                refuse_if_disabled(conn, actor.id)
            return work(conn)

        return gated

    def _audited(self, actor: Actor, action: str, origin: Origin, work: Callable[[Connection], Any],
                 **fields: Any) -> Any:
        """Run `work` (which records its own success events); audit an error if it fails."""
        try:
            return self._transaction(self._gated(actor, work))
        except VaultError as error:
            outcome = ("denied" if error.code in ("not_found", "forbidden", "conflict", "invalid_input",
                                                  "integrity_failure", "legal_hold") else "error")
            events = [self._event(actor, action, outcome, origin, error_code=error.code, **fields)]
            if isinstance(error, IntegrityFailure):
                events.append(integrity_event(self._clock(), actor, origin, error))
            self._audit_failure(events)
            raise
