"""The relay's part of the OpenAPI document (api/http/relay.py): forwarding, inbound, route management."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.http import schemas as s
from api.http.openapi_admin import BODY_ERRORS, SECURED, error_responses, json_content, ref
from api.http.relay import PUBLISHABLE_KEY_HEADER, PURPOSE_HEADER
from api.http.stepup import HEADER as STEP_UP_HEADER
from vault.relay.routes import NAME, RouteConfig

__all__ = ["MODELS", "relay_paths"]

MODELS: list[type[BaseModel]] = [RouteConfig]
_ROUTE = {"name": "route", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME.pattern}}
_PATH = {"name": "path", "in": "path", "required": True,
         "description": "The upstream path below the route's base; must match one of its patterns",
         "schema": {"type": "string", "maxLength": 1024}}
_ANY = {"description": "Any body: JSON or form bodies may hold `{{tokenvault:<token>:<field>}}` templates",
        "content": {"*/*": {"schema": {}}}}
_ANSWER = {"description": "The upstream's status, its allowed headers and its body, after response protection "
                          "(configured fields tokenized or redacted, PAN-like numbers masked, sent values redacted)",
           "content": {"*/*": {"schema": {}}}}
_STEP_UP = {"name": STEP_UP_HEADER, "in": "header", "required": True,
            "description": "A fresh, unused TOTP code of the operator (step-up); else 401 step_up_required",
            "schema": {"type": "string", "pattern": r"^[0-9]{6}$"}}
_OBJECT: dict[str, Any] = {"type": "object"}


def _forward(method: str) -> dict[str, Any]:
    purpose = {"name": PURPOSE_HEADER, "in": "header", "required": False,
               "description": "The purpose of the detokenize (needed when the route serves several)",
               "schema": {"type": "string", "enum": ["payment", "fulfillment", "support", "marketing", "legal"]}}
    found: dict[str, Any] = {
        "summary": f"Relay a {method.upper()} to the route's upstream with templates filled from tokens",
        "operationId": f"relay{method.capitalize()}", "security": SECURED, "parameters": [_ROUTE, _PATH, purpose],
        "description": "Each distinct token filled in spends one value of the caller's detokenize quota (429 with "
                       "Retry-After when spent); 409 when the route changed under the call three times running.",
        "responses": {"default": _ANSWER, **error_responses("401", "403", "404", "409", *BODY_ERRORS, "422", "429",
                                                            "502", "503", "504")},
    }
    if method in ("post", "put", "patch"):
        found["requestBody"] = {"required": False, **_ANY}
    return found


def relay_paths() -> dict[str, Any]:
    key = {"name": PUBLISHABLE_KEY_HEADER, "in": "header", "required": True,
           "description": "The route's publishable key: good for this inbound route and nothing else",
           "schema": {"type": "string", "maxLength": 128}}
    return {
        "/v1/relay/{route}/{path}": {m: _forward(m) for m in ("get", "post", "put", "patch", "delete")},
        "/v1/inbound/{route}/{path}": {"post": {
            "summary": "Tokenize the route's fields of a browser's JSON request and forward it to the merchant",
            "operationId": "relayInbound", "security": [], "parameters": [_ROUTE, _PATH, key],
            "requestBody": {"required": True, **json_content(_OBJECT)},
            "responses": {"default": _ANSWER, **error_responses("401", "403", *BODY_ERRORS, "422", "429", "502", "503",
                                                                "504")},
        }},
        "/v1/relay-routes": {
            "get": {"summary": "Current relay routes, without their secrets", "operationId": "listRelayRoutes",
                    "security": SECURED,
                    "responses": {"200": {"description": "Routes", **json_content(_OBJECT)},
                                  **error_responses("401", "403", "429", "503")}},
            "post": {"summary": "Propose a route or a new version of one (a second admin approves)",
                     "operationId": "proposeRelayRoute", "security": SECURED,
                     "parameters": [{"name": "new_publishable_key", "in": "query", "required": False,
                                     "schema": {"type": "string", "enum": ["true", "false"]}}, _STEP_UP],
                     "requestBody": {"required": True, **json_content(ref(RouteConfig))},
                     "responses": {"202": {"description": "Filed for approval", **json_content(_OBJECT)},
                                   **error_responses("401", "403", "404", "409", *BODY_ERRORS, "422", "429", "503")}},
        },
        "/v1/relay-routes/{route}/disable": {"post": {
            "summary": "Propose disabling a route (a second admin approves)", "operationId": "disableRelayRoute",
            "security": SECURED, "parameters": [_ROUTE, _STEP_UP],
            "responses": {"202": {"description": "Filed for approval", **json_content(ref(s.ApprovalFiled))},
                          **error_responses("401", "403", "404", "409", "422", "429", "503")}},
        },
    }
