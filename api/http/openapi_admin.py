"""The operators' part of the OpenAPI document: audit, privacy, keys, auth, operators and approvals.

api.openapi assembles the whole document; this module also holds the helpers both parts use.
Request bodies are the pydantic models the routes validate with (unknown fields refused), path
parameters carry the shape the route checks, and every endpoint that calls
`api.http.stepup.require_step_up` documents the `X-TOTP` header it needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from api.http import schemas as s
from api.http.stepup import HEADER as STEP_UP_HEADER
from vault.audit.log import MAX_PAGE

__all__ = ["MODELS", "SECURED", "BODY_ERRORS", "STEP_UP_PARAMETER", "ref", "json_content", "error_responses",
           "admin_paths"]

SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]
# What every operation with a body can also answer: 408 and 413 from the buffering front
# (api/http/buffering.py: a body too slow, or too large), 415 from api/http/bodies.py.
BODY_ERRORS = ("408", "413", "415")
OBJECT: dict[str, Any] = {"type": "object"}
# Models of the operators' endpoints, added to components/schemas by api.openapi.
MODELS: list[type[BaseModel]] = [
    s.CorrectBody, s.CorrectedOut, s.ConsentsBody, s.RestrictionBody, s.HoldBody, s.RequestBody,
    s.CloseRequestBody, s.DisclosureBody, s.TransferBody, s.RotateBody, s.RetireBody, s.ReencryptBody,
    s.LoginBody, s.LoginOut, s.OperatorBody, s.JobStarted, s.ApprovalOut, s.ApprovalFiled,
    s.EnrolBeginBody, s.EnrolConfirmBody, s.PasswordChangeBody, s.ReenrolBody,
]
_ERRORS = {
    "401": "Missing or invalid credentials (`unauthenticated`), or `step_up_required`",
    "403": "The role may not use this endpoint (`forbidden`)",
    "404": "Not found (`not_found`), or not visible to this role: the two are indistinguishable",
    "409": "Conflicts with the current state (`conflict`)",
    "400": "Malformed request (`malformed_request`)",
    "408": "The body did not arrive in time (`request_timeout`): not complete within 30 s of the head, or "
           "arriving slower than the minimum body rate after its grace period (README, Serving)",
    "413": "Body too large (`payload_too_large`), whatever its transfer encoding",
    "415": "Not UTF-8 JSON with Content-Type application/json, or a Content-Encoding (`unsupported_media_type`)",
    "422": "Invalid input (`invalid_input`: names the field and rule, never echoes the value)",
    "429": "Rate limited (`rate_limited`, with Retry-After), or too many bodies in flight from this address",
    "503": "Key service, database or audit trail unavailable; nothing was done",
}
# Shapes the routes check path parameters against (else 422 invalid_input).
_SUBJECT = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": r"^[A-Za-z0-9._:-]+$"}
_ID = {"type": "string", "pattern": r"^[a-z]{3,5}_[0-9a-f]{16}$"}
_JOB = {"type": "string", "pattern": r"^job_[0-9a-f]{16}$"}
_OPERATOR = {"type": "string", "pattern": r"^op_[0-9a-f]{16}$"}
_APPROVAL = {"type": "string", "pattern": r"^apr_[0-9a-f]{20}$"}


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def error_responses(*codes: str) -> dict[str, Any]:
    return {code: {"description": _ERRORS.get(code, "Error"), **json_content(ref(s.ErrorBody))} for code in codes}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            **({"description": description} if description else {})}


STEP_UP_PARAMETER = {"name": STEP_UP_HEADER, "in": "header", "required": True,
            "description": "A fresh, unused TOTP code of the operator (step-up); else 401 step_up_required",
            "schema": {"type": "string", "pattern": r"^[0-9]{6}$"}}


def _op(operation_id: str, summary: str, ok: str, out: dict[str, Any] | None, *,
        body: type[BaseModel] | None = None, params: list[dict[str, Any]] | None = None, step_up: bool = False,
        extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One authenticated operation: bearer security, the errors every /v1 call can answer, plus `extra`."""
    parameters = [*(params or []), *([STEP_UP_PARAMETER] if step_up else [])]
    codes = ("401", "403", "422", "429", "503", *(BODY_ERRORS if body else ()), *extra)
    found: dict[str, Any] = {
        "summary": summary, "operationId": operation_id, "security": SECURED,
        **({"parameters": parameters} if parameters else {}),
        **({"requestBody": {"required": True, **json_content(ref(body))}} if body else {}),
        "responses": {ok: {"description": summary, **(json_content(out) if out is not None else {})},
                      **error_responses(*sorted(set(codes)))},
    }
    return found


def _audit_paths() -> dict[str, Any]:
    filters = [
        _query("since", {"type": "string", "format": "date-time"}, "ISO 8601; UTC when no offset"),
        _query("until", {"type": "string", "format": "date-time"}),
        _query("actor", {"type": "string", "pattern": r"^[A-Za-z0-9._:@-]{1,128}$"}),
        _query("action", {"type": "string", "pattern": r"^[a-z_]{1,40}$"}),
        _query("outcome", {"type": "string", "enum": ["allowed", "denied", "error"]}),
        _query("token", {"type": "string", "minLength": 1, "maxLength": 256}, "a token, never a card number"),
        _query("subject_id", _SUBJECT),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
        _query("cursor", {"type": "integer", "minimum": 0, "maximum": 10**18 - 1}, "`next` of the previous page"),
    ]
    verify = _op("verifyAuditTrail", "The latest verification report if fresh, else a job (202); never waits",
                 "200", OBJECT)
    job = _op("auditVerificationJob", "A verification job: progress (202), then its report", "200", OBJECT,
              params=[_path("job_id", {"type": "string", "pattern": r"^verify_[0-9a-f]{16}$"})], extra=("404",))
    for operation in (verify, job):
        operation["responses"]["409"] = {"description": "The trail is broken (`intact` false, with the reason)",
                                         **json_content(OBJECT)}
        operation["responses"]["202"] = {"description": "Verification running: progress, rate and ETA; "
                                                        "Location names the job", **json_content(OBJECT)}
    return {
        "/v1/audit/verify/jobs/{job_id}": {"get": job},
        "/v1/audit/events": {"get": _op("listAuditEvents", "A page of audit events (reading is audited)", "200",
                                        OBJECT, params=filters)},
        "/v1/audit/verify": {"get": verify},
    }


def _privacy_paths() -> dict[str, Any]:
    subject = [_path("subject_id", _SUBJECT)]
    return {
        "/v1/subjects/{subject_id}": {
            "get": _op("viewSubject", "What is held about a subject (no values)", "200", OBJECT, params=subject,
                       extra=("404",)),
            "delete": _op("eraseSubject", "Erase a subject (crypto-shredding)", "200", OBJECT, params=subject,
                          step_up=True, extra=("404", "409")),
        },
        "/v1/subjects/{subject_id}/export": {"get": _op(
            "exportSubject", "Every value held about a subject (access, portability)", "200", OBJECT,
            params=subject, extra=("404",))},
        "/v1/subjects/{subject_id}/minor": {"post": _op(
            "markSubjectMinor", "Mark a subject as a minor", "200", OBJECT, params=subject, step_up=True,
            extra=("404", "409"))},
        "/v1/subjects/{subject_id}/restriction": {"put": _op(
            "setSubjectRestriction", "Restrict or release processing of a subject's data", "204", None,
            body=s.RestrictionBody, params=subject, extra=("404", "409"))},
        "/v1/subjects/{subject_id}/consents": {"put": _op(
            "setSubjectConsents", "Record a subject's consent choices", "200", OBJECT, body=s.ConsentsBody,
            params=subject, extra=("404", "409"))},
        "/v1/subjects/{subject_id}/holds": {"post": _op(
            "addLegalHold", "Place a legal hold (blocks deletion, expiry, purge and correction)", "201", OBJECT,
            body=s.HoldBody,
            params=subject, extra=("404", "409"))},
        "/v1/subjects/{subject_id}/holds/{hold_id}": {"delete": _op(
            "releaseLegalHold", "Ask to release a legal hold (a second officer approves)", "202",
            ref(s.ApprovalFiled), params=[*subject, _path("hold_id", _ID)], step_up=True, extra=("404", "409"))},
        "/v1/subjects/{subject_id}/requests": {"post": _op(
            "registerSubjectRequest", "Register a data subject request (starts its deadline)", "201", OBJECT,
            body=s.RequestBody, params=subject, extra=("404", "409"))},
        "/v1/privacy/requests": {"get": _op(
            "listSubjectRequests", "Open data subject requests, soonest due first", "200", OBJECT,
            params=[_query("due_within_days", {"type": "integer", "minimum": 0, "maximum": 9999})])},
        "/v1/privacy/requests/{request_id}/close": {"post": _op(
            "closeSubjectRequest", "Close a data subject request with its outcome", "204", None,
            body=s.CloseRequestBody, params=[_path("request_id", _ID)], extra=("404", "409"))},
        "/v1/disclosures": {"post": _op(
            "requestDisclosure", "Ask for a legal disclosure (a second officer approves)", "202", OBJECT,
            body=s.DisclosureBody, step_up=True, extra=("404", "409"))},
        "/v1/disclosures/{disclosure_id}/approve": {"post": _op(
            "approveDisclosure", "Approve another officer's disclosure request", "200", OBJECT,
            params=[_path("disclosure_id", _ID)], step_up=True, extra=("404", "409"))},
        "/v1/disclosures/{disclosure_id}/collect": {"post": _op(
            "collectDisclosure", "Collect an approved disclosure, once (step-up)", "200", OBJECT,
            params=[_path("disclosure_id", _ID)], step_up=True, extra=("404", "409"))},
        "/v1/transfers": {"post": _op(
            "requestTransfer", "Ask for a business transfer export (dual control)", "202", ref(s.ApprovalFiled),
            body=s.TransferBody, step_up=True, extra=("404", "409"))},
    }


def _key_paths() -> dict[str, Any]:
    job = [_path("job_id", _JOB)]
    return {
        "/v1/keys": {"get": _op("listKeys", "KEK versions, domain keys and their status", "200", OBJECT)},
        "/v1/keys/due": {"get": _op("listKeysDue", "Keys due or overdue for rotation", "200", OBJECT)},
        "/v1/keys/rotate": {"post": _op(
            "rotateKeys", "Start a rotation job (KEK, and domain keys unless false)", "202", ref(s.JobStarted),
            body=s.RotateBody, step_up=True, extra=("409",))},
        "/v1/keys/reencrypt": {"post": _op(
            "reencryptDomainKey", "Ask to re-encrypt under new keys and destroy a domain key (dual control)",
            "202", ref(s.ApprovalFiled), body=s.ReencryptBody, step_up=True, extra=("404", "409"))},
        "/v1/keys/retire": {"post": _op(
            "retireKekVersions", "Ask to raise the KEK's minimum decryption version (dual control)", "202",
            ref(s.ApprovalFiled), body=s.RetireBody, step_up=True, extra=("409",))},
        "/v1/keys/jobs/{job_id}": {"get": _op("readKeyJob", "Progress of a key job", "200", OBJECT, params=job,
                                              extra=("404",))},
        "/v1/keys/jobs/{job_id}/resume": {"post": _op(
            "resumeKeyJob", "Resume an interrupted key job", "202", OBJECT, params=job, extra=("404", "409"))},
    }


def _unauthenticated(operation_id: str, summary: str, body: type[BaseModel]) -> dict[str, Any]:
    """Like login: no credentials, rate-limited per source address, the same 401 whatever failed."""
    return {"summary": summary, "operationId": operation_id, "security": [],
            "requestBody": {"required": True, **json_content(ref(body))},
            "responses": {"200": {"description": summary, **json_content(OBJECT)},
                          **error_responses("401", *BODY_ERRORS, "422", "429", "503")}}


def _operator_paths() -> dict[str, Any]:
    operator = [_path("operator_id", _OPERATOR)]
    login_responses = {"200": {"description": "A session", **json_content(ref(s.LoginOut))},
                       **error_responses("401", *BODY_ERRORS, "422", "429", "503")}
    logout = _op("logout", "End this session (an API key cannot: 403)", "204", None)
    logout["responses"].pop("422")
    return {
        "/v1/auth/login": {"post": {
            "summary": "Operator login: password and TOTP code (the same 401 whatever failed)",
            "operationId": "login", "security": [],
            "requestBody": {"required": True, **json_content(ref(s.LoginBody))},
            "responses": login_responses,
        }},
        "/v1/auth/logout": {"post": logout},
        "/v1/auth/password": {"post": _op(
            "changePassword", "Change one's own password (current password + step-up); every session ends",
            "200", OBJECT, body=s.PasswordChangeBody, step_up=True)},
        "/v1/auth/reenrol": {"post": _op(
            "reenrolSelf", "Reset one's own password and TOTP (password + step-up): a new enrolment code",
            "200", OBJECT, body=s.ReenrolBody, step_up=True)},
        "/v1/enrolment/begin": {"post": _unauthenticated(
            "beginEnrolment", "Redeem an enrolment code: set one's password; answers the otpauth URI",
            s.EnrolBeginBody)},
        "/v1/enrolment/confirm": {"post": _unauthenticated(
            "confirmEnrolment", "Complete enrolment with a first TOTP code (the code is spent)", s.EnrolConfirmBody)},
        "/v1/operators": {
            "get": _op("listOperators", "Operators and their state", "200", OBJECT),
            "post": _op("createOperator", "Create an operator (disabled until a second admin approves)", "201",
                        OBJECT, body=s.OperatorBody, step_up=True, extra=("409",)),
        },
        "/v1/operators/{operator_id}/enable": {"post": _op(
            "requestEnableOperator", "Ask to enable an operator (dual control)", "202", ref(s.ApprovalOut),
            params=operator, step_up=True, extra=("404", "409"))},
        "/v1/operators/{operator_id}/reenrol": {"post": _op(
            "requestReenrolOperator", "Ask to reset an operator's password and TOTP (dual control); the first "
            "half of the new enrolment code", "202", OBJECT, params=operator, step_up=True, extra=("404",))},
        "/v1/operators/{operator_id}/disable": {"post": _op(
            "requestDisableOperator", "Ask to disable an operator (dual control)", "202", ref(s.ApprovalOut),
            params=operator, step_up=True, extra=("404", "409"))},
        "/v1/clients/{client_id}/resume": {"post": _op(
            "requestResumeClient", "Ask to resume a client suspended for guessing (dual control)", "202",
            ref(s.ApprovalFiled), params=[_path("client_id", {"type": "string", "pattern": r"^cli_[0-9a-f]{16}$"})],
            step_up=True, extra=("404", "409"))},
        "/v1/approvals": {"get": _op(
            "listApprovals", "Dual-control requests (pending by default)", "200", OBJECT,
            params=[_query("status", {"type": "string", "enum": ["pending", "all"]})])},
        "/v1/approvals/{approval_id}/approve": {"post": _op(
            "approveRequest", "Approve another operator's request; it runs once, now", "200", ref(s.ApprovalOut),
            params=[_path("approval_id", _APPROVAL)], step_up=True, extra=("404", "409"))},
    }


def admin_paths() -> dict[str, Any]:
    return {**_audit_paths(), **_privacy_paths(), **_key_paths(), **_operator_paths()}
