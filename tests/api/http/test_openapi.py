"""/openapi.json documents every /v1 endpoint the app serves, and is a valid OpenAPI 3.1 document.

The route list comes from the Flask app's url_map, so an endpoint added without its
operation in api/http/openapi.py (or api/http/openapi_admin.py) fails here, and so escapes neither
the document nor the schemathesis fuzzing built on it (tests/attacks/test_fuzz_api.py).
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from schemathesis.core.result import Ok

from api.http import stepup
from api.http.openapi import document
from api.http.stepup import HEADER

_CONVERTER = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
_METHODS = {"get", "put", "post", "delete", "patch"}


def _served(app: Flask) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every /v1 route: `<path:token>` becomes `{token}`."""
    return {(_CONVERTER.sub(r"{\1}", rule.rule), method.lower())
            for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1/")
            for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item if method in _METHODS}


def test_every_v1_route_is_documented(app: Flask) -> None:
    served = _served(app)
    documented = {(path, method) for path, method in _documented(document()) if path.startswith("/v1/")}
    assert len(served) >= 38
    assert served - documented == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "operations in /openapi.json that no route serves"


def test_served_document_is_a_valid_openapi_31_document(app: Flask) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # the OpenAPI 3.1 meta-schema bundled with schemathesis
    operations = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in operations)  # every $ref resolves
    assert len(operations) == len(_documented(doc))
    for name, component in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), name


def test_operation_ids_are_unique_and_named(app: Flask) -> None:
    doc = document()
    ids = [spec["operationId"] for item in doc["paths"].values() for spec in item.values()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]+", name) for name in ids)


def test_path_parameters_match_the_path(app: Flask) -> None:
    for path, item in document()["paths"].items():
        for method, spec in item.items():
            named = {param["name"] for param in spec.get("parameters", []) if param["in"] == "path"}
            assert named == set(re.findall(r"{([^}]+)}", path)), (method, path)


def _step_up_routes(app: Flask) -> set[tuple[str, str]]:
    """The routes whose view is wrapped by api.http.stepup.require_step_up (its closure holds `operation`)."""
    found = set()
    for rule in app.url_map.iter_rules():
        view: Any = app.view_functions[rule.endpoint]
        while view is not None:
            if view.__code__.co_filename == stepup.__file__:
                found |= {(_CONVERTER.sub(r"{\1}", rule.rule), m.lower()) for m in rule.methods or ()
                          if m not in ("HEAD", "OPTIONS")}
                break
            view = getattr(view, "__wrapped__", None)
    return found


def test_step_up_header_is_documented_where_required(app: Flask) -> None:
    step_up = _step_up_routes(app)
    assert ("/v1/operators", "post") in step_up and ("/v1/keys/rotate", "post") in step_up
    for path, item in document()["paths"].items():
        for method, spec in item.items():
            headers = [p for p in spec.get("parameters", []) if p["in"] == "header" and p["name"] == HEADER]
            assert bool(headers) == ((path, method) in step_up), (method, path)
            assert all(h["required"] for h in headers)


@pytest.mark.parametrize("body", ["LoginBody", "OperatorBody", "HoldBody", "DisclosureBody", "ReencryptBody"])
def test_request_bodies_refuse_unknown_fields(body: str) -> None:
    assert document()["components"]["schemas"][body]["additionalProperties"] is False


def test_errors_reference_the_error_body() -> None:
    for item in document()["paths"].values():
        for spec in item.values():
            for status, response in spec["responses"].items():
                if status.startswith(("4", "5")) and (status, spec["operationId"]) not in {
                        ("409", "verifyAuditTrail"), ("409", "auditVerificationJob")}:
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"}, (spec["operationId"], status)


def test_a_route_without_its_operation_is_caught(app: Flask) -> None:
    """The check above is not vacuous: a new endpoint missing from the document shows up."""
    app.add_url_rule("/v1/undocumented/<item_id>", "undocumented", lambda item_id: "", methods=["POST"])
    assert _served(app) - _documented(document()) == {("/v1/undocumented/{item_id}", "post")}


def test_every_body_operation_documents_the_fronts_refusals() -> None:
    """408 (slow body) and 413 (too large) come from api/http/buffering.py before any route runs, 415 from
    api/http/bodies.py, 429 from the rate limits and the per-address body cap: a generated client with
    `raise_on_unexpected_status` would raise on any of them left out (relay operations included)."""
    with_body = [(path, method, spec) for path, item in document()["paths"].items()
                 for method, spec in item.items() if "requestBody" in spec]
    assert any(path.startswith("/v1/relay/") for path, _, _ in with_body)
    assert any(path.startswith("/v1/inbound/") for path, _, _ in with_body)
    for path, method, spec in with_body:
        missing = {"408", "413", "415", "429"} - set(spec["responses"])
        assert not missing, (method, path, missing)
    assert "request_timeout" in document()["paths"]["/v1/tokens"]["post"]["responses"]["408"]["description"]
