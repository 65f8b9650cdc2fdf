"""Operators' login and logout, and their own credentials (password change, TOTP re-enrolment).

`POST /v1/auth/login` and the enrolment endpoints (api/http/enrolment.py) are the only /v1
endpoints without credentials. Changing one's password or re-enrolling needs the session, a
step-up (X-TOTP) and the current password; both end every session of the operator.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.http.auth import bearer_credentials, current_actor
from api.http.schemas import LoginBody, PasswordChangeBody, ReenrolBody
from api.http.stepup import current_step_up, require_step_up
from api.http.tokens import components, json_body, origin, parse
from vault.errors import Unauthenticated
from vault.secret import Secret

__all__ = ["blueprint", "LOGIN_PATH"]

blueprint = Blueprint("auth", __name__, url_prefix="/v1/auth")
LOGIN_PATH = "/v1/auth/login"


@blueprint.post("/login")
def login() -> tuple[Response, int]:
    body = parse(LoginBody, json_body())
    done = components().operators.login(body.username, Secret(body.password), Secret(body.totp), origin())
    return jsonify({
        "session_token": done.session.token.expose(),
        "expires_at": done.session.expires_at.isoformat().replace("+00:00", "Z"),
        "operator": {"id": done.actor.id, "username": done.actor.name, "role": done.actor.role},
    }), 200


@blueprint.post("/password")
@require_step_up()
def change_password() -> tuple[Response, int]:
    body = parse(PasswordChangeBody, json_body())
    revoked = components().operators.change_password(current_step_up(), Secret(body.current_password),
                                                     Secret(body.new_password), origin())
    return jsonify({"changed": True, "sessions_revoked": revoked}), 200


@blueprint.post("/reenrol")
@require_step_up()
def reenrol() -> tuple[Response, int]:
    """A new authenticator: credentials reset, sessions end; the whole code comes back to this operator."""
    body = parse(ReenrolBody, json_body())
    issued = components().operators.reenrol_self(current_step_up(), Secret(body.password), origin())
    return jsonify({"enrolment_code": issued.code.expose(),
                    "expires_at": issued.expires_at.isoformat().replace("+00:00", "Z")}), 200


@blueprint.post("/logout")
def logout() -> tuple[str, int]:
    token = bearer_credentials()
    if token is None:
        raise Unauthenticated("missing credentials")
    components().operators.logout(current_actor(), token, origin())
    return "", 204
