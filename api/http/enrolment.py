"""Enrolment over HTTP: a new (or reset) operator redeems their one-time code. No credentials needed.

`POST /v1/enrolment/begin` {code, password} sets the password they chose and answers the otpauth
URI of a new TOTP seed; `POST /v1/enrolment/confirm` {code, totp} completes it with a first code
from the authenticator. Rate-limited per source address like login; every failure is the same 401.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.http.schemas import EnrolBeginBody, EnrolConfirmBody
from api.http.tokens import components, json_body, origin, parse
from vault.secret import Secret

__all__ = ["blueprint", "PATHS"]

blueprint = Blueprint("enrolment", __name__, url_prefix="/v1/enrolment")
PATHS = ("/v1/enrolment/begin", "/v1/enrolment/confirm")


@blueprint.post("/begin")
def begin() -> tuple[Response, int]:
    body = parse(EnrolBeginBody, json_body())
    done = components().enrolments.begin(Secret(body.code), Secret(body.password), origin())
    return jsonify({"operator": {"id": done.operator_id, "username": done.username},
                    "totp_uri": done.totp_uri.expose(),
                    "next": "add the URI to an authenticator app, then POST /v1/enrolment/confirm "
                            "with the code and a TOTP code"}), 200


@blueprint.post("/confirm")
def confirm() -> tuple[Response, int]:
    body = parse(EnrolConfirmBody, json_body())
    actor = components().enrolments.confirm(Secret(body.code), Secret(body.totp), origin())
    return jsonify({"operator": {"id": actor.id, "username": actor.name, "role": actor.role},
                    "enrolled": True}), 200
