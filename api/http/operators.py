"""Operator management and dual-control approvals over HTTP (admins; step-up on every change).

Every change needs a step-up and a second admin's approval (`POST /v1/approvals/<id>/approve`,
with a step-up of their own): an operator created here starts disabled, with an
`enable_operator` request filed for it; disabling or re-enabling one files a request too.

No credentials pass through here. Creating an operator, or asking to reset one
(`reenrol`), answers the first half of a one-time enrolment code; approving answers the
second half, once. The new operator needs both halves (vault/access/enrolment.py), so neither
admin alone can enrol in their place.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.http.auth import current_actor
from api.http.schemas import OperatorBody
from api.http.stepup import current_step_up, require_step_up
from api.http.tokens import components, json_body, origin, parse
from vault.errors import ValidationFailed

__all__ = ["blueprint"]

blueprint = Blueprint("operators", __name__, url_prefix="/v1")
_OPERATOR_ID = re.compile(r"^op_[0-9a-f]{16}$")
_APPROVAL_ID = re.compile(r"^apr_[0-9a-f]{20}$")


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat().replace("+00:00", "Z") if hasattr(v, "isoformat") else v for k, v in row.items()}


def _checked(pattern: re.Pattern[str], name: str, value: str) -> str:
    if not pattern.match(value):
        raise ValidationFailed(name, "is not an id")
    return value


@blueprint.get("/operators")
def list_operators() -> tuple[Response, int]:
    found = components().operators.list(current_actor(), origin())
    return jsonify({"operators": [_iso(row) for row in found]}), 200


@blueprint.post("/operators")
@require_step_up("manage_operators")
def create_operator() -> tuple[Response, int]:
    """The first half of the enrolment code, shown once, and the pending request that must enable the account."""
    body = parse(OperatorBody, json_body())
    step_up = current_step_up()
    first, half_hash = components().enrolments.first_half()
    new = components().operators.create(step_up.actor, body.username, body.role, origin())
    pending = components().approvals.request(step_up, "enable_operator",
                                             {"operator_id": new.id, "enrolment_half": half_hash}, origin())
    return jsonify({"id": new.id, "username": new.username, "role": new.role, "active": new.active,
                    "enrolment_code_first_half": first.expose(), "approval": pending.public()}), 201


@blueprint.post("/operators/<operator_id>/reenrol")
@require_step_up("manage_operators")
def reenrol_operator(operator_id: str) -> tuple[Response, int]:
    """Dual control: once approved, the operator's password, TOTP and sessions are void; halves as on create."""
    first, half_hash = components().enrolments.first_half()
    params = {"operator_id": _checked(_OPERATOR_ID, "operator_id", operator_id), "enrolment_half": half_hash}
    found = components().approvals.request(current_step_up(), "reenrol_operator", params, origin())
    return jsonify({"enrolment_code_first_half": first.expose(), "approval": found.public()}), 202


@blueprint.post("/operators/<operator_id>/enable")
@require_step_up("manage_operators")
def enable_operator(operator_id: str) -> tuple[Response, int]:
    """Dual control: files a pending request; a second admin approves it."""
    params = {"operator_id": _checked(_OPERATOR_ID, "operator_id", operator_id)}
    found = components().approvals.request(current_step_up(), "enable_operator", params, origin())
    return jsonify(found.public()), 202


@blueprint.post("/operators/<operator_id>/disable")
@require_step_up("manage_operators")
def disable_operator(operator_id: str) -> tuple[Response, int]:
    """Dual control: files a pending request; a second admin approves it."""
    params = {"operator_id": _checked(_OPERATOR_ID, "operator_id", operator_id)}
    found = components().approvals.request(current_step_up(), "disable_operator", params, origin())
    return jsonify(found.public()), 202


@blueprint.get("/approvals")
def list_approvals() -> tuple[Response, int]:
    status = request.args.get("status", "pending")
    if status not in ("pending", "all"):
        raise ValidationFailed("status", "must be pending or all")
    found = components().approvals.list(current_actor(), origin(), pending_only=status == "pending")
    return jsonify({"approvals": [item.public() for item in found]}), 200


@blueprint.post("/approvals/<approval_id>/approve")
@require_step_up()
def approve(approval_id: str) -> tuple[Response, int]:
    done = components().approvals.approve(current_step_up(), _checked(_APPROVAL_ID, "approval_id", approval_id),
                                          origin())
    return jsonify({**done.public(), "shown_once": {name: value.expose() for name, value in done.shown_once.items()}}
                   ), 200
