"""Schemathesis against the app's own /openapi.json, with the credentials of every role and none.

Each operation gets schema-conforming (positive) and schema-violating (negative) requests.
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

from api.openapi import document
from tests.attacks.support import UNLIMITED, api_keys_for, echoed, sqlite_app, strings_in
from tests.conftest import auth

MAX_EXAMPLES = 25
CREDENTIALS = ("checkout", "payment_gateway", "shipping", "support", "auditor", None)
OPERATIONS = [(path, method.upper()) for path, item in document()["paths"].items() for method in item]
# Negative data needs something to negate: a body or a parameter.
HAS_INPUT = {(path, method.upper()) for path, item in document()["paths"].items() for method, spec in item.items()
             if spec.get("requestBody") or spec.get("parameters")}
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
        client.post("/v1/tokens", json={}, headers=auth(keys["auditor"])),
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


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[tuple[Any, Flask,
                                                                                                     dict[str, str]]]:
    parts, app = sqlite_app(tmp_path_factory.mktemp("fuzz"), _sqlite_template, **UNLIMITED)
    keys = api_keys_for(parts)
    _learn_fixed_messages(app, keys)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    yield schema, app, keys
    parts.engine.dispose()


def test_served_document_is_the_generated_one(fuzz_target: tuple[Any, Flask, dict[str, str]]) -> None:
    _, app, _ = fuzz_target
    served = app.test_client().get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == document()


def _combinations() -> Iterator[Any]:
    """Every role (and none) x operation x mode, less negative data where it cannot matter:
    an operation without body or parameter has nothing to make invalid, and without
    credentials every /v1 request stops at 401 before its body is read."""
    for role in CREDENTIALS:
        for path, method in OPERATIONS:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and (role is None or (path, method) not in HAS_INPUT):
                    continue
                yield pytest.param(role, path, method, mode, id=f"{role or 'anonymous'}-{method} {path}-{mode}")


@pytest.mark.parametrize(("role", "path", "method", "mode"), list(_combinations()))
def test_fuzz_operation(fuzz_target: tuple[Any, Flask, dict[str, str]], role: str | None, path: str,
                        method: str, mode: GenerationMode) -> None:
    schema, _, keys = fuzz_target
    operation = schema[path][method]
    headers = auth(keys[role]) if role else {"Authorization": ""}
    statuses: list[int] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, feedback=NO_FEEDBACK))
    def run(case: Any) -> None:
        if role is None and case.headers:
            case.headers.pop("Authorization", None)
        response = case.call(headers=headers)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert statuses, "the fuzzer sent nothing"
    if role is None:
        assert set(statuses) <= {200, 401}, statuses  # only /healthz and /readyz answer without credentials


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
