"""The only place errors become HTTP: status codes and stable error codes.

Bodies are `{"error": {"code", "message"[, "field"]}}` and never echo a submitted
value. Anything unexpected is a bare 500 with no detail.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from vault import errors as e

__all__ = ["register", "error_body", "STATUS"]

STATUS: dict[type[e.VaultError], int] = {
    e.ValidationFailed: 422,
    e.NotFound: 404,
    e.Unauthenticated: 401,
    e.Forbidden: 403,
    e.Conflict: 409,
    e.PayloadTooLarge: 413,
    e.RateLimited: 429,
    e.KeyServiceUnavailable: 503,
    e.StorageUnavailable: 503,
    e.AuditWriteFailed: 503,
    e.DecryptionFailed: 500,
    e.ConfigurationError: 500,
    e.UpstreamFailed: 502,
}

_MESSAGES = {
    "not_found": "token not found",
    "unauthenticated": "missing or invalid credentials",
    "step_up_required": "this action needs a fresh, unused TOTP code in the X-TOTP header",
    "api_key_role_not_allowed": ("this API key carries a human role; API keys may carry only machine roles: "
                                 "log in as an operator (password + TOTP) instead"),
    "rate_limited": "too many requests",
    "forbidden": "this role may not use this operation",
    "key_service_unavailable": "key service unavailable",
    "storage_unavailable": "storage unavailable",
    "audit_unavailable": "audit trail unavailable; nothing was done",
    "decryption_failed": "the stored value failed its integrity check",
    "internal_error": "internal error",
    "configuration_error": "internal error",
    "upstream_failed": "the relay's upstream could not be reached or answered beyond its limits",
}


def error_body(error: e.VaultError) -> dict[str, Any]:
    """The public JSON for an error: a fixed message per code, or field + rule for input."""
    if isinstance(error, e.ValidationFailed):
        return {"code": error.code, "message": f"{error.field} {error.rule}", "field": error.field}
    return {"code": error.code, "message": _MESSAGES.get(error.code, str(error))}


def status_of(error: e.VaultError) -> int:
    if isinstance(error, e.UpstreamFailed) and error.timeout:
        return 504
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _respond(status: int, body: dict[str, Any]) -> tuple[Response, int]:
    response = jsonify({"error": body})
    if status == 429:
        response.headers["Retry-After"] = "1"
    return response, status


def register(app: Flask) -> None:
    @app.errorhandler(e.VaultError)
    def _vault_error(error: e.VaultError) -> tuple[Response, int]:
        return _respond(status_of(error), error_body(error))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        codes = {400: "malformed_request", 404: "no_such_endpoint", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type"}
        code = codes.get(status, "http_error")
        return _respond(status, {"code": code, "message": code.replace("_", " ")})

    @app.errorhandler(SQLAlchemyError)
    def _database(error: SQLAlchemyError) -> tuple[Response, int]:
        """A last resort: a database failure that escaped the domain still fails closed as 503."""
        app.logger.error("database error", extra={"error_type": type(error).__name__})
        return _respond(503, {"code": "storage_unavailable", "message": _MESSAGES["storage_unavailable"]})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        app.logger.error("unhandled error", extra={"error_type": type(error).__name__})
        return _respond(500, {"code": "internal_error", "message": "internal error"})
