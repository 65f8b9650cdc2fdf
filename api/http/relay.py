"""The relay over HTTP: outbound forwarding, inbound tokenization (with CORS), and route management.

    POST /v1/relay/<route>/<path>      a client with a role the route serves; templates in the body or
                                       forwarded headers; `X-TokenVault-Purpose` when the route has several
    POST /v1/inbound/<route>/<path>    a browser or app with the route's publishable key
                                       (`X-TokenVault-Publishable-Key`) from an allowed Origin
    GET  /v1/relay-routes              admins: current routes, without their secrets
    POST /v1/relay-routes              admins (step-up): propose a route or a change; a second admin approves
    POST /v1/relay-routes/<route>/disable   admins (step-up): propose disabling it

All decisions are vault.relay's; this module reads the request and writes the answer.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from api.http.auth import current_actor
from api.http.ratelimits import ITEM_QUOTA
from api.http.stepup import current_step_up, require_step_up
from api.http.tokens import components, json_body, origin
from vault.relay.changes import ACTION
from vault.relay.service import CallerRequest, RelayAnswer
from vault.secret import Secret

__all__ = ["blueprint", "INBOUND_PREFIX", "PUBLISHABLE_KEY_HEADER", "PURPOSE_HEADER"]

blueprint = Blueprint("relay", __name__, url_prefix="/v1")
INBOUND_PREFIX = "/v1/inbound/"
PUBLISHABLE_KEY_HEADER = "X-TokenVault-Publishable-Key"
PURPOSE_HEADER = "X-TokenVault-Purpose"
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _caller_request(path: str) -> CallerRequest:
    return CallerRequest(
        method=request.method, path=path, query=request.query_string.decode("latin-1"),
        content_type=request.headers.get("Content-Type", ""),
        headers=[(name.lower(), value) for name, value in request.headers.items()],
        body=request.get_data(cache=False), purpose=request.headers.get(PURPOSE_HEADER))


def _response(answer: RelayAnswer) -> Response:
    response = Response(answer.body, status=answer.status)
    response.headers.pop("Content-Type", None)
    for name, value in answer.headers:
        response.headers.add(name, value)
    return response


@blueprint.route("/relay/<route>/<path:path>", methods=_METHODS)
def forward(route: str, path: str) -> Response:
    # Each value filled in is charged to the caller's detokenize quota, like an item of /v1/detokenize.
    answer = components().relay.forward(current_actor(), route, _caller_request(path), origin(),
                                        spend=current_app.extensions[ITEM_QUOTA])
    return _response(answer)


def _cors(response: Response, allowed_origin: str) -> Response:
    response.headers["Access-Control-Allow-Origin"] = allowed_origin
    response.headers["Vary"] = "Origin"
    return response


@blueprint.post("/inbound/<route>/<path:path>", provide_automatic_options=False)
def inbound(route: str, path: str) -> Response:
    key = request.headers.get(PUBLISHABLE_KEY_HEADER)
    browser_origin = request.headers.get("Origin")
    answer = components().relay.inbound(route, Secret(key) if key else None, browser_origin,
                                        _caller_request(path), origin())
    return _cors(_response(answer), browser_origin or "")


@blueprint.route("/inbound/<route>/<path:path>", methods=["OPTIONS"])
def inbound_preflight(route: str, path: str) -> Response:
    """CORS preflight: allowed only for an origin the route lists; answers nothing else."""
    browser_origin = request.headers.get("Origin")
    found = components().relay.allowed_origin(route, browser_origin)
    response = Response(status=204)
    if found is not None and browser_origin:
        _cors(response, browser_origin)
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = f"Content-Type, {PUBLISHABLE_KEY_HEADER}"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


@blueprint.get("/relay-routes")
def list_routes() -> tuple[Response, int]:
    return jsonify({"routes": components().relay_routes.list(current_actor(), origin())}), 200


@blueprint.post("/relay-routes")
@require_step_up("manage_relay")
def propose_route() -> tuple[Response, int]:
    """A new route or a new version of one: filed for a second admin's approval (202)."""
    step_up = current_step_up()
    rotate = request.args.get("new_publishable_key") == "true"
    proposal = components().relay_routes.propose(step_up.actor, json_body(), origin(), new_publishable_key=rotate)
    pending = components().approvals.request(step_up, ACTION, proposal.params(), origin())
    return jsonify({"route": proposal.name, "version": proposal.version, "publishable_key": proposal.publishable_key,
                    "approval": pending.public()}), 202


@blueprint.post("/relay-routes/<route>/disable")
@require_step_up("manage_relay")
def disable_route(route: str) -> tuple[Response, int]:
    step_up = current_step_up()
    proposal = components().relay_routes.disable(step_up.actor, route, origin())
    pending = components().approvals.request(step_up, ACTION, proposal.params(), origin())
    return jsonify({"route": proposal.name, "version": proposal.version, "approval": pending.public()}), 202
