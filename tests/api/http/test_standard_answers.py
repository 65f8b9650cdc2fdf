"""Answers that follow the standards (issue #18): RFC 6750 challenges, RFC 9110 Allow, no server banner,
bodies refused by media type and encoding, query parameters that are input like any other (422, never 5xx).
"""

from __future__ import annotations

import gzip
import json

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.wiring import Components
from tests.conftest import auth
from tests.support.operators import bearer


@pytest.fixture
def staff(components: Components) -> dict[str, dict[str, str]]:
    """Authorization headers for the operator roles: operator sessions (API keys carry machine roles only)."""
    return {role: auth(bearer(components, role, f"std-{role}")) for role in ("auditor", "privacy_officer", "admin")}


BODY = json.dumps({"kind": "text", "value": "standard answers"}).encode()


def test_401_names_the_bearer_scheme(client: FlaskClient) -> None:
    missing = client.get("/v1/tokens/tok_text_x")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="tokenvault"'
    wrong = client.get("/v1/tokens/tok_text_x", headers=auth("tvk_wrong"))
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="tokenvault", error="invalid_token"'


def test_405_lists_the_allowed_methods(client: FlaskClient, api_keys: dict[str, str]) -> None:
    answer = client.put("/v1/tokens", headers=auth(api_keys["checkout"]))
    assert answer.status_code == 405
    assert answer.get_json()["error"]["code"] == "method_not_allowed"
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}
    assert client.delete("/healthz").headers["Allow"]


def test_no_server_banner(client: FlaskClient) -> None:
    assert client.get("/healthz").headers.get("Server", "") == ""


def test_gzip_and_other_encodings_are_refused_clearly(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for encoding, body in (("gzip", gzip.compress(BODY)), ("deflate", BODY), ("br", BODY)):
        answer = client.post("/v1/tokens", data=body, headers={**auth(api_keys["checkout"]),
                             "Content-Type": "application/json", "Content-Encoding": encoding})
        assert answer.status_code == 415, encoding
        error = answer.get_json()["error"]
        assert error["code"] == "unsupported_media_type" and "Content-Encoding" in error["message"]
    identity = client.post("/v1/tokens", data=BODY, headers={**auth(api_keys["checkout"]),
                           "Content-Type": "application/json", "Content-Encoding": "identity"})
    assert identity.status_code == 201


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=utf-16", "application/json; charset=latin-1"])
def test_only_utf8_json_is_accepted(client: FlaskClient, api_keys: dict[str, str], content_type: str) -> None:
    answer = client.post("/v1/tokens", data=BODY, headers={**auth(api_keys["checkout"]), "Content-Type": content_type})
    assert answer.status_code == 415
    assert answer.get_json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_json_are_refused(client: FlaskClient, api_keys: dict[str, str], encoding: str) -> None:
    answer = client.post("/v1/tokens", data=BODY.decode().encode(encoding),
                         headers={**auth(api_keys["checkout"]), "Content-Type": "application/json"})
    assert answer.status_code == 415


def test_audit_times_outside_utc_range_are_invalid_input(client: FlaskClient, staff: dict[str, dict[str, str]]) -> None:
    headers = staff["auditor"]
    for since in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "yesterday", "2026-13-01"):
        answer = client.get("/v1/audit/events", query_string={"since": since}, headers=headers)
        assert answer.status_code == 422, (since, answer.status_code)
    for limit in ("²", "١٢", "-1", "0", "1e3", "9" * 19):
        answer = client.get("/v1/audit/events", query_string={"limit": limit}, headers=headers)
        assert answer.status_code == 422, (limit, answer.status_code)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["since", "until", "limit", "cursor", "actor", "action", "outcome", "token",
                             "subject_id", "other"]),
       value=st.text(min_size=0, max_size=40))
def test_audit_query_parameters_fuzzed_never_5xx(client: FlaskClient, staff: dict[str, dict[str, str]], name: str,
                                                 value: str) -> None:
    answer = client.get("/v1/audit/events", query_string={name: value}, headers=staff["auditor"])
    assert answer.status_code in (200, 422), (name, value, answer.status_code)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=0, max_size=12))
def test_other_query_parameters_fuzzed_never_5xx(client: FlaskClient, staff: dict[str, dict[str, str]],
                                                 value: str) -> None:
    privacy = client.get("/v1/privacy/requests", query_string={"due_within_days": value},
                         headers=staff["privacy_officer"])
    assert privacy.status_code in (200, 422), (value, privacy.status_code)
    approvals = client.get("/v1/approvals", query_string={"status": value}, headers=staff["admin"])
    assert approvals.status_code in (200, 422), (value, approvals.status_code)
