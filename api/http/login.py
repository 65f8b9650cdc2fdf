"""Operators' login and logout: `POST /v1/auth/login` is the only /v1 endpoint without credentials."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.http.auth import bearer_credentials, current_actor
from api.http.schemas import LoginBody
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


@blueprint.post("/logout")
def logout() -> tuple[str, int]:
    token = bearer_credentials()
    if token is None:
        raise Unauthenticated("missing credentials")
    components().operators.logout(current_actor(), token, origin())
    return "", 204
