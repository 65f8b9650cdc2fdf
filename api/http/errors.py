"""The only place errors become HTTP: status codes and stable error codes.

Bodies are `{"error": {"code", "message"[, "field"]}}` and never echo a submitted
value. Anything unexpected is a bare 500 with no detail.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

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
    e.IntegrityFailure: 403,
    e.IntegrityLockdown: 503,
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
    "client_suspended": "this client is suspended; an administrator must resume it",
    "legal_hold": "the data is under a legal hold",
    "key_service_unavailable": "key service unavailable",
    "storage_unavailable": "storage unavailable",
    "audit_unavailable": "audit trail unavailable; nothing was done",
    "decryption_failed": "the stored value failed its integrity check",
    "integrity_failure": "a stored record failed its integrity check; refused and reported",
    "integrity_lockdown": ("the audit trail failed its integrity check: the vault serves only admins and "
                           "auditors until it verifies again"),
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


def _challenge(error: e.VaultError) -> str:
    """RFC 6750 section 3: every 401 names the Bearer scheme; `invalid_token` only when credentials were sent
    and refused (a request without any, or a valid session missing its X-TOTP step-up, gets the bare one)."""
    if request.headers.get("Authorization") and not isinstance(error, e.StepUpRequired):
        return 'Bearer realm="tokenvault", error="invalid_token"'
    return 'Bearer realm="tokenvault"'


def _respond(status: int, body: dict[str, Any], retry_after: int = 1) -> tuple[Response, int]:
    response = jsonify({"error": body})
    if status == 429:
        response.headers["Retry-After"] = str(retry_after)
    return response, status


def register(app: Flask) -> None:
    @app.errorhandler(e.VaultError)
    def _vault_error(error: e.VaultError) -> tuple[Response, int]:
        wait = error.retry_after if isinstance(error, e.RateLimited) else 1
        response, status = _respond(status_of(error), error_body(error), wait)
        if status == 401:
            response.headers["WWW-Authenticate"] = _challenge(error)
        return response, status

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        status = error.code or 500
        codes = {400: "malformed_request", 404: "no_such_endpoint", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type"}
        code = codes.get(status, "http_error")
        response, status = _respond(status, {"code": code,
                                             "message": getattr(error, "public_message", code.replace("_", " "))})
        if status == 405 and isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(error.valid_methods))  # RFC 9110 15.5.6
        return response, status

    @app.errorhandler(SQLAlchemyError)
    def _database(error: SQLAlchemyError) -> tuple[Response, int]:
        """A last resort: a database failure that escaped the domain still fails closed as 503."""
        app.logger.error("database error", extra={"error_type": type(error).__name__})
        return _respond(503, {"code": "storage_unavailable", "message": _MESSAGES["storage_unavailable"]})

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> tuple[Response, int]:
        app.logger.error("unhandled error", extra={"error_type": type(error).__name__})
        return _respond(500, {"code": "internal_error", "message": "internal error"})
