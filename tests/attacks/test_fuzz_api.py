"""Schemathesis against the app's own /openapi.json, with the credentials of every role and none.

Each operation gets schema-conforming (positive) and schema-violating (negative) requests.
The token endpoints are fuzzed with every API-client role and none; the operators' endpoints
(audit, privacy, keys, auth, operators, approvals) with the operator role the policy grants
them (a session; on step-up endpoints a fresh operator per request, with a valid X-TOTP code,
so requests get past the step-up to the input and domain checks), with one operator role it
does not grant (403 paths), and with none.
Checks: no 5xx, documented responses match their schema and content type, and no 4xx body
repeats any 8+ character piece of a string the request sent (values, and keys that are not
plain field names: the API names an unknown plain field, by design, but nothing else).

SQLite only, one app per xdist worker. Hypothesis is derandomized and schemathesis's runtime
feedback (constants mined from the running code and earlier responses) is off, so a run is
repeatable: the same requests on every machine.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.feedback import NO_FEEDBACK
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.http.openapi import document
from api.http.stepup import HEADER as STEP_UP
from api.wiring import Components
from tests.attacks.support import UNLIMITED, api_keys_for, echoed, sqlite_app, strings_in
from tests.conftest import auth
from tests.support.operators import PASSWORD, Operator, make_operator
from vault.audit.trail import Origin
from vault.secret import Secret

MAX_EXAMPLES = 25
FEW_EXAMPLES = 10  # a role refused before its input is read, or no credentials: little to explore
CREDENTIALS = ("checkout", "payment_gateway", "shipping", "support", "audit_export", "auditor", None)
OPERATORS = ("admin", "privacy_officer", "auditor")
OPERATIONS = [(path, method.upper()) for path, item in document()["paths"].items() for method in item]
# Negative data needs something to negate: a body or a parameter.
HAS_INPUT = {(path, method.upper()) for path, item in document()["paths"].items() for method, spec in item.items()
             if spec.get("requestBody") or spec.get("parameters")}
STEPS_UP = {(path, method.upper()) for path, item in document()["paths"].items() for method, spec in item.items()
            if any(p["name"] == STEP_UP for p in spec.get("parameters", []))}
# The API clients' endpoints, fuzzed with every client role (and none), as they always were.
TOKEN_OPERATIONS = {("/v1/tokens", "POST"), ("/v1/tokens/batch", "POST"), ("/v1/detokenize", "POST"),
                    ("/v1/tokens/{token}", "GET"), ("/v1/tokens/{token}", "DELETE"), ("/healthz", "GET"),
                    ("/readyz", "GET"),
                    # The relay forwards for API clients: no route exists here, so every role gets 404 or 422.
                    *(("/v1/relay/{route}/{path}", m) for m in ("GET", "POST", "PUT", "PATCH", "DELETE"))}
# Who may use each operators' endpoint (default policy), by path prefix; the first match wins.
OWNERS = (
    ("/v1/audit/", ("auditor",)),
    ("/v1/subjects/{subject_id}/consents", ("privacy_officer", "checkout")),
    ("/v1/subjects/", ("privacy_officer",)), ("/v1/privacy/", ("privacy_officer",)),
    ("/v1/disclosures", ("privacy_officer",)), ("/v1/transfers", ("privacy_officer",)),
    ("/v1/tokens/{token}", ("privacy_officer",)),  # PATCH: rectification
    ("/v1/keys", ("admin",)), ("/v1/operators", ("admin",)), ("/v1/approvals", ("admin",)),
    ("/v1/auth/logout", ("admin",)), ("/v1/auth/password", ("admin",)), ("/v1/auth/reenrol", ("admin",)),
    ("/v1/relay-routes", ("admin",)),
    ("/v1/inbound/", ()),  # a publishable key, not a bearer: fuzzed anonymously (no route: 401)
    ("/v1/auth/login", ()),  # no credentials: fuzzed anonymously, positive and negative
    ("/v1/enrolment/", ()),
)
ANONYMOUS = ("/v1/auth/login", "/v1/enrolment/begin", "/v1/enrolment/confirm")  # no credentials by design
# Past the step-up these also need the operator's current password, which the fuzzer never guesses: 401.
OWN_CREDENTIALS = ("/v1/auth/password", "/v1/auth/reenrol")
_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def _vocabulary(value: Any) -> set[str]:
    """Every string in the OpenAPI document: words the service may say without being told them."""
    return set(strings_in(value))


VOCABULARY = _vocabulary(document())


def _learn_fixed_messages(app: Flask, keys: dict[str, str]) -> None:
    """Add the service's own fixed error texts (401, 403, 404, 405, 413, 415, 422) to the vocabulary."""
    client = app.test_client()
    probes = [
        client.post("/v1/tokens", json={}),
        client.post("/v1/tokens", json={}, headers=auth(keys["audit_export"])),
        client.get("/v1/tokens/0000000000000000", headers=auth(keys["checkout"])),
        client.put("/v1/tokens", headers=auth(keys["checkout"])),
        client.post("/v1/tokens", data=b"{" * (6 * 1024 * 1024), content_type="application/json",
                    headers=auth(keys["checkout"])),
        client.post("/v1/tokens", data=b"{", content_type="application/json", headers=auth(keys["checkout"])),
        client.post("/v1/tokens", data=b"{}", content_type="text/plain", headers=auth(keys["checkout"])),
        client.get("/v1/nothing-here", headers=auth(keys["checkout"])),
    ]
    for response in probes:
        VOCABULARY.update(strings_in(response.get_json(silent=True)))


def _submitted(value: Any, *, key: bool = False) -> Iterator[str]:
    """Strings of a request body that must never come back: values, and keys that are not plain names."""
    if isinstance(value, str):
        if not (key and _PLAIN_NAME.match(value)):
            yield value
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _submitted(name, key=True)
            yield from _submitted(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _submitted(item)


def no_submitted_value_echoed(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx body never repeats 8+ characters of a submitted value (or of a path parameter)."""
    if not 400 <= response.status_code < 500:
        return None
    sent = [*_submitted(case.body if isinstance(case.body, dict | list | str) else None)]
    sent += [str(value) for value in (case.path_parameters or {}).values()]
    sent = [text for text in sent if len(text) >= 8 and text not in VOCABULARY]
    found = echoed(sent, response.text, size=8, allowed=VOCABULARY)
    if found:
        raise AssertionError(f"{response.status_code} body repeats submitted text: {found!r}")
    return True


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance,
          no_submitted_value_echoed]


class Target:
    """The fuzzed app, the schema loaded from it, and credentials: API keys and operators' sessions."""

    def __init__(self, parts: Components, app: Flask) -> None:
        self.parts, self.app = parts, app
        self.keys = api_keys_for(parts)
        self.schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
        self._made = 0
        self.sessions = {role: self.session(self.operator(role)) for role in OPERATORS}

    def operator(self, role: str) -> Operator:
        self._made += 1
        return make_operator(self.parts, f"fuzz-{role.replace('_', '-')}-{self._made}", role)

    def session(self, operator: Operator) -> str:
        """Log in (this consumes the operator's TOTP code of the current time step)."""
        done = self.parts.operators.login(operator.username, Secret(PASSWORD), Secret(operator.code(datetime.now(UTC))),
                                          Origin())
        return done.session.token.expose()

    def credentials(self, role: str) -> str:
        return self.sessions[role] if role in OPERATORS else self.keys[role]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[Target]:
    parts, app = sqlite_app(tmp_path_factory.mktemp("fuzz"), _sqlite_template, **UNLIMITED,
                            TOKENVAULT_LOGIN_RATE_LIMIT="100000/second")
    target = Target(parts, app)
    _learn_fixed_messages(app, target.keys)
    yield target
    parts.trail.close()
    parts.engine.dispose()


def test_served_document_is_the_generated_one(fuzz_target: Target) -> None:
    served = fuzz_target.app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == document()


def _roles(path: str, method: str) -> tuple[tuple[str | None, bool], ...]:
    """(role, whether it is granted the operation) for each role that fuzzes the operation."""
    if (path, method) in TOKEN_OPERATIONS:
        return tuple((role, True) for role in CREDENTIALS)
    owners = next(roles for prefix, roles in OWNERS if path.startswith(prefix))
    if path in ("/v1/auth/logout", "/v1/auth/password", "/v1/auth/reenrol"):
        return (("admin", True), (None, False))  # one's own session or credentials: no role is refused
    if not owners:
        return ((None, True),)
    outsider = "privacy_officer" if "auditor" in owners else "auditor"
    return (*((role, True) for role in owners), (outsider, False), (None, False))


def _combinations() -> Iterator[Any]:
    """Each operation x the roles that fuzz it (and none) x mode, less negative data where it cannot
    matter: an operation without body or parameter has nothing to make invalid, without credentials
    every /v1 request stops at 401 before its input is read, and a role never granted the operation
    stops at 403 (or at the path check) before the body is read."""
    for path, method in OPERATIONS:
        for role, granted in _roles(path, method):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and (not granted or (path, method) not in HAS_INPUT
                                                        or (role is None and path not in ANONYMOUS)):
                    continue
                yield pytest.param(role, granted, path, method, mode,
                                   id=f"{role or 'anonymous'}-{method} {path}-{mode}")


@pytest.mark.parametrize(("role", "granted", "path", "method", "mode"), list(_combinations()))
def test_fuzz_operation(fuzz_target: Target, role: str | None, granted: bool, path: str, method: str,
                        mode: GenerationMode) -> None:
    operation = fuzz_target.schema[path][method]
    # A step-up spends a TOTP code (and failed codes lock the account): a fresh operator per request.
    fresh = role in OPERATORS and ((path, method) in STEPS_UP or path == "/v1/auth/logout")
    statuses: list[int] = []

    def headers(case: Any) -> dict[str, str]:
        """Credentials for one request; a fresh operator (session and step-up code) where it spends them."""
        if role is None:
            if case.headers:
                case.headers.pop("Authorization", None)
            return {"Authorization": ""} if path not in ANONYMOUS else {}
        if not fresh:
            return auth(fuzz_target.credentials(role))
        operator = fuzz_target.operator(role)
        session = fuzz_target.session(operator)
        return {**auth(session), STEP_UP: operator.code(datetime.now(UTC), 1)}

    examples = MAX_EXAMPLES if granted or (path, method) in TOKEN_OPERATIONS else FEW_EXAMPLES

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, feedback=NO_FEEDBACK))
    def run(case: Any) -> None:
        extra = headers(case)
        if STEP_UP in extra and case.headers:
            case.headers.pop(STEP_UP, None)
        response = case.call(headers=extra)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert statuses, "the fuzzer sent nothing"
    if role is None and path not in ANONYMOUS:
        assert set(statuses) <= {200, 401}, statuses  # only /healthz and /readyz answer without credentials
    if not granted and role is not None:
        assert not any(200 <= status < 300 for status in statuses), statuses
        if path != "/v1/approvals/{approval_id}/approve":  # any operator may try; the request's own rule decides
            assert 403 in statuses, statuses
    if fresh and mode is GenerationMode.POSITIVE and path not in OWN_CREDENTIALS:
        assert set(statuses) != {401}, "no request got past the step-up"


def test_echo_check_catches_an_echo() -> None:
    """The custom check itself: a 422 naming a submitted value fails, the fixed vocabulary does not."""
    case = SimpleNamespace(body={"kind": "card", "value": {"pan": "4111111111111111"}, "4111111111111111": 1},
                           path_parameters={})
    leaky = SimpleNamespace(status_code=422, text='{"error": {"message": "value.pan 4111111111111111 bad"}}')
    with pytest.raises(AssertionError, match="repeats submitted text"):
        no_submitted_value_echoed(None, leaky, case)
    key_leak = SimpleNamespace(status_code=422, text='{"error": {"field": "4111111111111111"}}')
    with pytest.raises(AssertionError):
        no_submitted_value_echoed(None, key_leak, SimpleNamespace(body={"4111111111111111": 1}, path_parameters={}))
    clean = SimpleNamespace(status_code=422, text='{"error": {"message": "value.pan fails the Luhn check"}}')
    assert no_submitted_value_echoed(None, clean, case)
    assert no_submitted_value_echoed(None, SimpleNamespace(status_code=200, text=leaky.text), case) is None
