"""Dual control: a sensitive action runs only once a second operator approves it.

An operator (after a step-up) files a request: an action name and its non-sensitive
parameters (ids, never values). A *different* operator whose role the policy grants the
action's operation approves it (after a step-up of their own); the action then runs in
the approving transaction, exactly once: the conditional update from `pending` lets
one approval through even when two arrive at once on different workers. A request not
approved before `expires_at` can no longer be approved.

Actions plug in with `register(ApprovalAction(...))` (see api/wiring.py); the first is
`disable_operator`. Later: retiring and destroying keys, legal disclosures.

An action's result is stored with the request, except its `Secret` values (an enrolment
code's second half): those are returned once, to the approver, in `Approval.shown_once`,
and stored as "[shown once to the approver]".
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.operators import StepUp
from vault.access.policy import Policy
from vault.audit.facts import check_approval
from vault.audit.lockdown import Lockdown
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import Conflict, Forbidden, NotFound, ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import approvals, operators

__all__ = ["ApprovalAction", "Approval", "Approvals"]

_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Ids the vault generates (`op_`, `cli_`, `hold_`, `dom_` + random hex): a run of hex digits can pass Luhn
# by chance, and an id is never a card number.
_GENERATED_ID = re.compile(r"[a-z]{2,5}_[0-9a-f]{16,24}")
# A transfer's recipient is the SHA-256 the vault computed from the recipient's key, and an enrolment
# code's first half travels as its keyed hash: one in about 20 such digests holds a Luhn-valid run of
# digits, and refusing it would fail that transfer, or the creation of an operator, at random.
_DIGEST = re.compile(r"[0-9a-f]{64}")
_DIGEST_PARAMS = frozenset({"recipient", "enrolment_half"})
_MAX_PARAMS_BYTES = 2048
_LIST_LIMIT = 200


def _now() -> datetime:
    return datetime.now(UTC)


def _no_check(_conn: Connection, _params: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class ApprovalAction:
    """An action under dual control.

    `operation` is the policy operation that both the requester and the approver need.
    `check` validates the parameters when the request is filed; `run` does the work
    inside the approving transaction, records its own audit event, and returns a small
    non-sensitive result.
    """

    name: str
    operation: str
    run: Callable[[Connection, Actor, dict[str, Any], Origin], dict[str, Any]]
    check: Callable[[Connection, dict[str, Any]], None] = _no_check
    lifetime: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Approval:
    id: str
    action: str
    params: dict[str, Any]
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    status: str  # pending | executed | expired
    approved_by: str | None = None
    approved_at: datetime | None = None
    result: dict[str, Any] | None = None
    shown_once: dict[str, Secret[str]] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat().replace("+00:00", "Z")

        return {"id": self.id, "action": self.action, "params": self.params, "requested_by": self.requested_by,
                "requested_at": iso(self.requested_at), "expires_at": iso(self.expires_at), "status": self.status,
                "approved_by": self.approved_by, "approved_at": iso(self.approved_at), "result": self.result}


def _check_params(params: dict[str, Any]) -> str:
    """Flat, small JSON of names to ids, numbers or flags: nothing that could be a secret value."""
    for name, value in params.items():
        if not _PARAM_NAME.match(name):
            raise ValidationFailed("params", "names must be lowercase identifiers")
        if not isinstance(value, str | int | bool) or (isinstance(value, str) and len(value) > 200):
            raise ValidationFailed("params", "values must be short strings, integers or booleans")
        if isinstance(value, str) and not _GENERATED_ID.fullmatch(value) and not (
                name in _DIGEST_PARAMS and _DIGEST.fullmatch(value)):
            refuse_pan("params", value)
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    if len(text) > _MAX_PARAMS_BYTES:
        raise ValidationFailed("params", f"must be at most {_MAX_PARAMS_BYTES} bytes of JSON")
    return text


class Approvals(AuditedOperations):
    """Pending requests, their approval, and the single execution that follows."""

    gate_operators = False  # `_check_approver` takes the approver's row after the request's (lock order)

    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, macs: RowMacs,
                 clock: Callable[[], datetime] = _now, lockdown: Lockdown | None = None) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        # Action, parameters, requester, status and expiry are MACed: an edited request never runs.
        self._macs = macs
        self._lockdown = lockdown
        self._actions: dict[str, ApprovalAction] = {}

    def register(self, action: ApprovalAction) -> None:
        if action.name in self._actions:
            raise ValueError(f"approval action {action.name} registered twice")
        self._actions[action.name] = action

    @property
    def actions(self) -> tuple[str, ...]:
        return tuple(self._actions)

    def _approval(self, row: Any, now: datetime) -> Approval:
        status = row["status"]
        if status == "pending" and row["expires_at"] <= now:
            status = "expired"
        return Approval(id=row["id"], action=row["action"], params=json.loads(row["params"]),
                        requested_by=row["requested_by"], requested_at=row["requested_at"],
                        expires_at=row["expires_at"], status=status, approved_by=row["approved_by"],
                        approved_at=row["approved_at"], result=json.loads(row["result"]) if row["result"] else None)

    def request(self, step_up: StepUp, action_name: str, params: dict[str, Any], origin: Origin) -> Approval:
        """File a pending request; nothing runs until another operator approves it."""
        actor = step_up.actor
        action = self._actions.get(action_name)
        if action is None:
            raise ValidationFailed("action", "is not an action under dual control")
        self._require(actor, action.operation, "request_approval", origin, detail=f"action={action_name}")
        text = _check_params(params)
        now = self._clock()
        approval_id = f"apr_{secrets.token_hex(10)}"

        def work(conn: Connection) -> Approval:
            action.check(conn, params)
            row = {"id": approval_id, "action": action_name, "params": text, "requested_by": actor.id,
                   "requested_at": now, "expires_at": now + action.lifetime, "status": "pending",
                   "approved_by": None, "approved_at": None, "result": None}
            conn.execute(insert(approvals), [{**row, "row_mac": self._macs.seal(conn, approvals, row)}])
            self._trail.record(conn, [self._event(actor, "request_approval", "allowed", origin,
                                                  detail=f"request={approval_id} action={action_name} {text}")])
            return self._approval(row, now)

        result: Approval = self._audited(actor, "request_approval", origin, work,
                                         detail=f"action={action_name} {text}")
        return result

    def approve(self, step_up: StepUp, approval_id: str, origin: Origin) -> Approval:
        """Approve and run a pending request: by another operator allowed the action, before it expires."""
        actor = step_up.actor
        if self._lockdown is not None:  # no grant while the audit chain is broken (vault.audit.lockdown)
            self._lockdown.check(actor, origin, grant=True)
        now = self._clock()
        detail = f"request={approval_id[:48]}"

        def work(conn: Connection) -> Approval:
            row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).mappings().first()
            if row is None:
                raise NotFound("no such approval request")
            self._macs.check(conn, approvals, row)
            check_approval(conn, self._macs.keys, row)  # a consumed request restored to pending: a replay
            action = self._actions.get(row["action"])
            if action is None:
                raise Conflict("this action can no longer be run")
            if not self._policy.may_use(actor.role, action.operation):
                raise Forbidden(f"role may not {action.operation}")
            if row["requested_by"] == actor.id:
                raise Forbidden("the requester cannot approve their own request")
            if row["status"] != "pending":
                raise Conflict("request already decided")
            if row["expires_at"] <= now:
                raise Conflict("request expired")
            taken = self._macs.update(conn, approvals, approval_id,
                                      {"status": "executed", "approved_by": actor.id, "approved_at": now},
                                      approvals.c.status == "pending")
            if not taken:
                raise Conflict("request already decided")
            self._check_approver(conn, actor)
            params = json.loads(row["params"])
            ran = action.run(conn, actor, params, origin)
            shown_once = {name: value for name, value in ran.items() if isinstance(value, Secret)}
            result = {name: "[shown once to the approver]" if name in shown_once else value
                      for name, value in ran.items()}
            self._macs.update(conn, approvals, approval_id, {"result": json.dumps(result, sort_keys=True)})
            self._trail.record(conn, [self._event(
                actor, "approve", "allowed", origin,
                detail=f"{detail} action={row['action']} requested_by={row['requested_by']}")])
            done = self._approval({**row, "status": "executed", "approved_by": actor.id, "approved_at": now,
                                   "result": json.dumps(result)}, now)
            return replace(done, shown_once=shown_once)

        approved: Approval = self._audited(actor, "approve", origin, work, detail=detail)
        return approved

    def _check_approver(self, conn: Connection, actor: Actor) -> None:
        """Forbidden unless the approver is, at this commit, an enabled and enrolled operator.

        Lock rule (issue #17): the approval row (taken above), then the approver's operator row
        FOR SHARE until commit. The approver's session and step-up were checked in earlier
        transactions; a disable acknowledged since (it holds the same row FOR UPDATE) is seen here,
        and a disable still running waits for this approval to commit first.
        """
        query = select(operators).where(operators.c.id == actor.id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        row = conn.execute(query).mappings().first()
        if row is None:
            raise Forbidden("only an operator can approve")
        self._macs.check(conn, operators, row)
        if row["disabled_at"] is not None or row["enrolment_hash"] is not None:
            raise Forbidden("the approver's account is disabled")

    def list(self, actor: Actor, origin: Origin, *, pending_only: bool = True) -> list[Approval]:
        """Requests for actions this role may approve (pending ones, or the latest of any status)."""
        mine = [name for name, action in self._actions.items() if self._policy.may_use(actor.role, action.operation)]
        if not mine:
            raise self._deny(actor, "list_approvals", origin, Forbidden("role may not approve any action"))
        now = self._clock()

        def work(conn: Connection) -> list[Approval]:
            query = select(approvals).where(approvals.c.action.in_(mine))
            if pending_only:
                query = query.where(approvals.c.status == "pending", approvals.c.expires_at > now)
            rows = conn.execute(query.order_by(approvals.c.requested_at.desc()).limit(_LIST_LIMIT)).mappings()
            found = [self._approval(row, now) for row in rows]
            self._trail.record(conn, [self._event(actor, "list_approvals", "allowed", origin,
                                                  detail=f"returned={len(found)}")])
            return found

        result: list[Approval] = self._audited(actor, "list_approvals", origin, work)
        return result
