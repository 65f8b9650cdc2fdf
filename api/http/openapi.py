"""The OpenAPI 3.1 document, generated from the pydantic schemas the routes validate with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.http import schemas as s
from api.http.openapi_admin import (
    BODY_ERRORS,
    MODELS,
    SECURED,
    STEP_UP_PARAMETER,
    admin_paths,
    error_responses,
    json_content,
    ref,
)
from api.http.openapi_relay import MODELS as RELAY_MODELS
from api.http.openapi_relay import relay_paths
from api.http.openapi_values import value_schemas
from vault.tokens.kinds import KINDS

__all__ = ["document"]

_ref, _json = ref, json_content


def _responses(ok: str, model: type[BaseModel] | None, description: str, *extra: str) -> dict[str, Any]:
    out: dict[str, Any] = {ok: {"description": description, **(_json(_ref(model)) if model else {})}}
    return {**out, **error_responses(*sorted({"401", "403", "422", "429", "503", *extra}))}


def document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        s.BatchBody, s.DetokenizeBody, s.ErrorBody, s.TokenOut, s.BatchOut, s.DetokenizeOut, s.DetokenizedError,
        s.HealthOut,
        *s.DOCUMENTED_ITEMS, *MODELS, *RELAY_MODELS,
    ]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = defs.get("$defs", {})
    # OAS 3.1 without a mapping would look `card` up as a schema name; the mapping names each kind's shape.
    schemas["TokenizeBody"] = {"oneOf": [_ref(m) for m in s.DOCUMENTED_ITEMS],
                               "discriminator": {"propertyName": "kind", "mapping": {
                                   kind: _ref(model)["$ref"] for kind, model in zip(KINDS, s.DOCUMENTED_ITEMS,
                                                                                    strict=True)}}}
    value_schemas(schemas)
    token_param = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 256}}]
    secured = SECURED
    return {
        "openapi": "3.1.0",
        "info": {"title": "TokenVault", "version": "1",
                 "description": "Tokenization vault for card and personal data."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/tokens": {"post": {
                "summary": "Tokenize one value", "operationId": "tokenize", "security": secured,
                "requestBody": {"required": True, **_json(_ref("TokenizeBody"))},
                "responses": _responses("201", s.TokenOut, "Token created (or found, if deterministic)", "409",
                                        *BODY_ERRORS),
            }},
            "/v1/tokens/batch": {"post": {
                "summary": "Tokenize up to 1,000 values; one result per item, in order",
                "operationId": "tokenizeBatch", "security": secured,
                "requestBody": {"required": True, **_json(_ref(s.BatchBody))},
                "responses": _responses("200", s.BatchOut, "Per-item results", *BODY_ERRORS),
            }},
            "/v1/detokenize": {"post": {
                "summary": "Values behind up to 1,000 tokens for a stated purpose",
                "operationId": "detokenize", "security": secured,
                "requestBody": {"required": True, **_json(_ref(s.DetokenizeBody))},
                "responses": _responses("200", s.DetokenizeOut, "Per-token results; a token the caller may not "
                                        "read answers exactly like one that does not exist", *BODY_ERRORS),
            }},
            "/v1/tokens/{token}": {
                "get": {"summary": "Non-sensitive metadata of a token", "operationId": "readMetadata",
                        "security": secured, "parameters": token_param,
                        "responses": _responses("200", s.TokenOut, "Metadata", "404")},
                "patch": {"summary": "Correct the value behind a token (rectification; step-up); same token. "
                                     "A card keeps its number: only expiry and holder change",
                          "operationId": "correctToken", "security": secured,
                          "parameters": [*token_param, STEP_UP_PARAMETER],
                          "requestBody": {"required": True, **_json(_ref(s.CorrectBody))},
                          "responses": _responses("200", s.CorrectedOut, "Corrected; lists who read the old value",
                                                  "404", "409", *BODY_ERRORS)},
                "delete": {"summary": "Delete a token and its ciphertext", "operationId": "deleteToken",
                           "security": secured, "parameters": token_param,
                           "responses": _responses("204", None, "Deleted", "404", "409")},
            },
            "/healthz": {"get": {"summary": "Process is up", "operationId": "health", "security": [],
                                 "responses": {"200": {"description": "Up", **_json(_ref(s.HealthOut))}}}},
            "/readyz": {"get": {"summary": "Database and key provider reachable", "operationId": "ready",
                                "security": [],
                                "responses": {"200": {"description": "Ready", **_json(_ref(s.HealthOut))},
                                              "503": {"description": "Not ready", **_json(_ref(s.ErrorBody))}}}},
            **admin_paths(),
            **relay_paths(),
        },
    }

