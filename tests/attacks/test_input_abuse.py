"""Hostile input over HTTP (Flask test client), on SQLite and PostgreSQL.

Every answer must be a clean 4xx (or a normal token where the input is legitimately odd),
never a 5xx, never an echo of what was sent, and the database must come out whole.
"""

from __future__ import annotations

import io
import json
import unicodedata
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, inspect, select, table
from sqlalchemy.engine import Engine
from werkzeug.test import TestResponse

from api.wiring import Components
from tests.attacks.support import ADDRESS, AMEX, CARD, CVV, EMAIL, HOLDER, PAN, PAN_SPACED, echoed, values_in
from tests.conftest import auth
from tests.support.operators import bearer
from vault.storage.schema import audit_events

SQL_INJECTIONS = (
    "' OR '1'='1",
    "'; DROP TABLE tokens; --",
    "\"; DELETE FROM audit_events; --",
    "1' UNION SELECT token, ciphertext FROM tokens --",
    "1); SELECT pg_sleep(5); --",
    "admin'/*",
    "%' OR 1=1 ESCAPE '\\",
    "$1::text || chr(39)",
    "' || (SELECT wrapped FROM domain_keys LIMIT 1) || '",
    "\\'; TRUNCATE clients CASCADE; --",
)


def _with(base: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    return {**base, field: value}


def _injected_items(payload: str) -> list[dict[str, Any]]:
    """One tokenize item per field of every kind, with `payload` in that field."""
    items: list[dict[str, Any]] = []
    for field in ("pan", "exp_month", "exp_year", "holder"):
        items.append({"kind": "card", "value": _with(CARD, field, payload)})
    for field in ("name", "line1", "line2", "city", "region", "postal_code", "country", "phone", "use"):
        items.append({"kind": "address", "value": _with(ADDRESS, field, payload)})
    for kind in ("cvv", "email", "phone", "name", "text"):
        items.append({"kind": kind, "value": payload})
    items.append({"kind": payload, "value": "x"})
    items.append({"kind": "text", "value": "x", "subject_id": payload})
    items.append({"kind": "text", "value": "x", "ttl_seconds": payload})
    items.append({"kind": "text", "value": "x", "deterministic": payload})
    items.append({"kind": "email", "value": f"{payload}@example.com"})
    return items


def snapshot(engine: Engine) -> dict[str, int]:
    """Row count of every table in the database."""
    with engine.connect() as conn:
        names = sorted(inspect(conn).get_table_names())
        assert {"tokens", "data_keys", "domain_keys", "clients", "audit_events"} <= set(names), names
        return {name: int(conn.execute(select(func.count()).select_from(table(name))).scalar_one()) for name in names}


def assert_clean_refusal(response: TestResponse, sent: Any, *statuses: int) -> dict[str, Any]:
    """A 4xx of the stable error shape that repeats nothing of what was sent."""
    assert response.status_code in (statuses or (400, 413, 415, 422)), (response.status_code, response.data[:300])
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, response.data[:300]
    assert {"code", "message"} <= set(body["error"])
    pieces = [text for text in values_in(sent) if len(text) >= 8]
    assert not echoed(pieces, response.get_data(as_text=True)), response.data[:300]
    result: dict[str, Any] = body["error"]
    return result


def assert_still_serving(client: FlaskClient, keys: dict[str, str]) -> None:
    response = client.post("/v1/tokens", json={"kind": "email", "value": EMAIL}, headers=auth(keys["checkout"]))
    assert response.status_code == 201, response.data


@pytest.fixture
def officer(components: Components) -> str:
    """A privacy officer may read text and names back (purpose legal): used to check round trips."""
    return bearer(components, "privacy_officer", "attack-officer")


# -- SQL injection --------------------------------------------------------------------------------


def test_sql_injection_in_every_field_of_every_kind(client: FlaskClient, api_keys: dict[str, str],
                                                    components: Components, officer: str) -> None:
    before = snapshot(components.engine)
    items = [item for payload in SQL_INJECTIONS for item in _injected_items(payload)]
    response = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    assert response.status_code == 200, response.data[:300]
    results = response.get_json()["results"]
    assert len(results) == len(items)
    tokens = []
    for item, result in zip(items, results, strict=True):
        if "error" in result:
            assert result["error"]["code"] == "invalid_input", (item, result)
            assert not echoed([s for s in values_in(item["value"]) if len(s) >= 8], json.dumps(result)), result
        else:
            assert result["kind"] == item["kind"] and result["token"]
            tokens.append((item, result["token"]))
    assert tokens, "free text and names take any characters: some items must have been tokenized"

    # What went in as text comes back exactly; nothing was interpreted.
    readable = [(item, token) for item, token in tokens if item["kind"] in ("text", "name")]
    answer = client.post("/v1/detokenize", json={"tokens": [t for _, t in readable], "purpose": "legal"},
                         headers=auth(officer))
    assert answer.status_code == 200
    for (item, token), result in zip(readable, answer.get_json()["results"], strict=True):
        assert result == {"token": token, "kind": item["kind"], "view": "plain", "value": item["value"]}

    # Injection in the path, the token list, the purpose, the audit filters and the credentials.
    for payload in SQL_INJECTIONS:
        sent = client.get(f"/v1/tokens/{payload}", headers=auth(api_keys["checkout"]))
        assert_clean_refusal(sent, payload, 404, 422)
        detok = client.post("/v1/detokenize", json={"tokens": [payload], "purpose": "payment"},
                            headers=auth(api_keys["payment_gateway"]))
        assert detok.status_code in (200, 422)
        assert payload not in detok.get_data(as_text=True)
        assert_clean_refusal(client.post("/v1/detokenize", json={"tokens": ["0000000000001111"], "purpose": payload},
                                         headers=auth(api_keys["payment_gateway"])), payload, 422)
        assert_clean_refusal(client.post("/v1/tokens", json={"kind": "email", "value": EMAIL},
                                         headers={"Authorization": f"Bearer tvk_{payload}"}), payload, 401)

    after = snapshot(components.engine)
    assert set(after) == set(before), "a table appeared or disappeared"
    assert after["tokens"] == before["tokens"] + len(tokens)
    assert after["clients"] == before["clients"]
    assert after["domain_keys"] == before["domain_keys"]
    assert after["audit_events"] > before["audit_events"]
    assert_still_serving(client, api_keys)


def test_sql_injection_in_audit_filters_matches_nothing(client: FlaskClient, api_keys: dict[str, str],
                                                        components: Components) -> None:
    auditor = components.clients.create("attack-siem", "audit_export")[1].expose()
    assert_still_serving(client, api_keys)
    for payload in SQL_INJECTIONS:
        for name in ("actor", "action", "outcome", "subject_id"):
            response = client.get("/v1/audit/events", query_string={name: payload}, headers=auth(auditor))
            # Refused as malformed (422), or matching nothing: never a 5xx, never a broadened query.
            assert response.status_code in (200, 422), (name, payload, response.data[:200])
            if response.status_code == 200:
                assert response.get_json()["events"] == [], (name, payload)
    snapshot(components.engine)


# -- size, depth, encoding, content type ----------------------------------------------------------


def test_huge_json_is_refused_with_413(client: FlaskClient, api_keys: dict[str, str], components: Components) -> None:
    limit = components.settings.max_body_bytes
    body = json.dumps({"kind": "text", "value": "A" * (limit + 1)}).encode()
    response = client.post("/v1/tokens", data=body, content_type="application/json",
                           headers=auth(api_keys["checkout"]))
    assert assert_clean_refusal(response, [], 413)["code"] == "payload_too_large"
    items = json.dumps({"items": [{"kind": "email", "value": EMAIL}] * (limit // 40)}).encode()
    assert len(items) > limit
    response = client.post("/v1/tokens/batch", data=items, content_type="application/json",
                           headers=auth(api_keys["checkout"]))
    assert_clean_refusal(response, [], 413)
    # Without a Content-Length (chunked upload) the limit still holds.
    response = client.post("/v1/tokens", input_stream=io.BytesIO(body), content_type="application/json",
                           headers={**auth(api_keys["checkout"]), "Transfer-Encoding": "chunked"})
    assert response.status_code == 413, response.status_code
    # Valid JSON padded with whitespace past the limit, chunked: was cut at the limit, parsed and answered 201.
    padded = json.dumps({"kind": "text", "value": "padded"}).encode() + b" " * limit
    response = client.post("/v1/tokens", input_stream=io.BytesIO(padded), content_type="application/json",
                           headers={**auth(api_keys["checkout"]), "Transfer-Encoding": "chunked"})
    assert assert_clean_refusal(response, [], 413)["code"] == "payload_too_large"
    assert_still_serving(client, api_keys)


def test_deeply_nested_json(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for depth in (64, 1_000, 100_000):
        nested = "[" * depth + "]" * depth
        bodies = (nested, f'{{"kind": "text", "value": {nested}}}',
                  f'{{"items": [{{"kind": "card", "value": {{"pan": {nested}}}}}]}}')
        for body in bodies:
            for path in ("/v1/tokens", "/v1/tokens/batch", "/v1/detokenize"):
                response = client.post(path, data=body, content_type="application/json",
                                       headers=auth(api_keys["checkout"]))
                assert response.status_code in (200, 403, 422), (path, depth, response.status_code)
                if response.status_code == 200:
                    assert all("error" in r for r in response.get_json()["results"])
    assert_still_serving(client, api_keys)


WRONG_CONTENT_TYPES = (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                       "application/xml", "application/json-patch+json", "application/jsonx", "text/json")


def test_wrong_content_type_is_refused(client: FlaskClient, api_keys: dict[str, str]) -> None:
    body = json.dumps({"kind": "card", "value": CARD}).encode()
    for content_type in WRONG_CONTENT_TYPES:
        extra = {"content_type": content_type} if content_type else {}
        response = client.post("/v1/tokens", data=body, headers=auth(api_keys["checkout"]), **extra)
        assert assert_clean_refusal(response, [PAN], 415)["code"] == "unsupported_media_type", content_type


def test_json_content_type_is_case_insensitive_and_charset_tolerant(client: FlaskClient,
                                                                    api_keys: dict[str, str]) -> None:
    body = json.dumps({"kind": "email", "value": EMAIL}).encode()
    for content_type in ("APPLICATION/JSON", "application/json; charset=utf-8"):
        response = client.post("/v1/tokens", data=body, content_type=content_type, headers=auth(api_keys["checkout"]))
        assert response.status_code == 201, (content_type, response.data)


BAD_ENCODINGS = {
    "invalid": b'{"kind": "text", "value": "\xff\xfe\xfd"}',
    "overlong": b'{"kind": "text", "value": "\xc0\xaf"}',  # overlong '/'
    "surrogate": b'{"kind": "text", "value": "\xed\xa0\x80"}',  # a surrogate, encoded
    "latin1": b'{"kind": "name", "value": "Ada \xe9"}',  # Latin-1, not UTF-8
    "lone-escape": b'{"kind": "text", "value": "\\ud800"}',  # a lone surrogate, escaped
    "reversed-pair": b'{"kind": "name", "value": "\\udfff\\ud800"}',
    "utf16-in-json": '{"kind": "text", "value": "hello"}'.encode("utf-16-le"),
}


def test_invalid_utf8_and_surrogates(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for name, raw in BAD_ENCODINGS.items():
        response = client.post("/v1/tokens", data=raw, content_type="application/json",
                               headers=auth(api_keys["checkout"]))
        # Bytes that are not UTF-8 (and UTF-16) are the wrong media type; escapes that decode to no
        # character are invalid input.
        expected = 422 if name in ("lone-escape", "reversed-pair") else 415
        assert response.status_code == expected, (name, response.status_code)
        assert_clean_refusal(response, [], expected)
    # A byte order mark is not UTF-8 JSON text (RFC 8259 8.1): refused, never a 5xx.
    response = client.post("/v1/tokens", data=b'\xef\xbb\xbf{"kind": "text", "value": "bom"}',
                           content_type="application/json", headers=auth(api_keys["checkout"]))
    assert response.status_code == 415
    assert_still_serving(client, api_keys)


# -- tokens: overlong, PANs, NUL ------------------------------------------------------------------


def test_overlong_tokens_in_path_and_body(client: FlaskClient, api_keys: dict[str, str],
                                          components: Components) -> None:
    long_token = "tok_email_" + "A" * 10_240
    long_digits = "4" * 10_240
    for token in (long_token, long_digits):
        for method in (client.get, client.delete):
            response = method(f"/v1/tokens/{token}", headers=auth(api_keys["checkout"]))
            assert_clean_refusal(response, [token], 404, 414, 422)
        response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                               headers=auth(api_keys["payment_gateway"]))
        assert_clean_refusal(response, [token], 422)
    with components.engine.connect() as conn:
        stored = conn.execute(select(func.max(func.length(audit_events.c.token)))).scalar()
    assert stored is None or stored <= 64


def test_pan_where_a_token_is_expected(client: FlaskClient, api_keys: dict[str, str], components: Components) -> None:
    for pan in (PAN, PAN_SPACED, AMEX, "4111-1111-1111-1111"):
        for method, role in ((client.get, "support"), (client.delete, "checkout")):
            response = method(f"/v1/tokens/{pan}", headers=auth(api_keys[role]))
            assert_clean_refusal(response, [pan, pan.replace(" ", "").replace("-", "")], 404, 422)
        response = client.post("/v1/detokenize", json={"tokens": [pan], "purpose": "payment"},
                               headers=auth(api_keys["payment_gateway"]))
        assert response.status_code == 200
        (result,) = response.get_json()["results"]
        assert "value" not in result and result["error"]["code"] in ("invalid_input", "not_found")
        text = response.get_data(as_text=True)
        assert pan not in text and pan.replace(" ", "").replace("-", "") not in text
    with components.engine.connect() as conn:
        rows = [json.dumps([str(v) for v in row]) for row in conn.execute(select(audit_events)).all()]
    assert not any(PAN in row or AMEX in row for row in rows)


def test_nul_bytes(client: FlaskClient, api_keys: dict[str, str]) -> None:
    checkout = auth(api_keys["checkout"])
    cases: list[dict[str, Any]] = [
        {"kind": "text", "value": "before\x00after-secret"},
        {"kind": "name", "value": "Ada\x00Lovelace"},
        {"kind": "card", "value": {**CARD, "pan": PAN + "\x00"}},
        {"kind": "cvv", "value": "12\x003"},
        {"kind": "email", "value": "ada\x00@example.com"},
        {"kind": "address", "value": {**ADDRESS, "city": "Lon\x00don"}},
        {"kind": "text", "value": "x", "subject_id": "cust\x00-42"},
        {"kind": "text\x00", "value": "x"},
    ]
    for body in cases:
        assert_clean_refusal(client.post("/v1/tokens", json=body, headers=checkout), body, 422)
    for path in ("/v1/tokens/tok_email_%00", "/v1/tokens/4111111111111111%00", "/v1/tokens/%00"):
        assert_clean_refusal(client.get(path, headers=checkout), [], 404, 422)
    response = client.post("/v1/detokenize", json={"tokens": ["tok_text_\x00" + "a" * 20], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 200 and "error" in response.get_json()["results"][0]
    assert_still_serving(client, api_keys)


# -- Unicode --------------------------------------------------------------------------------------


INVISIBLE_OR_CONTROL = (
    "\u202eecilA",  # right-to-left override
    "Ada\u2066Lovelace\u2069",  # isolates
    "Ada\u200bLovelace",  # zero-width space
    "\ufeffAda",  # byte order mark inside
    "Ada\u00adLovelace",  # soft hyphen
    "Ada\u061cLovelace",  # Arabic letter mark
    "Ada\U000e0041",  # tag character
    "Ada\u0000",
    "Ada\u0085Lovelace",  # next line (C1 control)
    "Ada\ue000",  # private use
    "\U0010ffff",  # noncharacter
)


def test_invisible_and_bidi_characters_in_names_are_refused(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for name in INVISIBLE_OR_CONTROL:
        for body in ({"kind": "name", "value": name}, {"kind": "address", "value": {**ADDRESS, "name": name}},
                     {"kind": "card", "value": {**CARD, "holder": name}}, {"kind": "text", "value": name}):
            response = client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"]))
            if body["kind"] == "text" and response.status_code == 201:
                continue
            assert response.status_code == 422, (ascii(name), body["kind"], response.status_code)
            assert_clean_refusal(response, [name, HOLDER], 422)


FULLWIDTH_NAME = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in "Ada Lovelace")


def _shifted(digits: str, zero: int) -> str:
    """The same digits in another script (fullwidth: 0xFF10, Arabic-Indic: 0x0660)."""
    return "".join(chr(zero + int(d)) for d in digits)


def test_confusables_are_kept_exactly_and_never_mistaken_for_ascii(client: FlaskClient, api_keys: dict[str, str],
                                                                   officer: str) -> None:
    """Look-alike letters are legitimate names in their scripts: stored NFC, returned as such."""
    names = ["\u0410d\u0430 L\u043evel\u0430ce", "Ad\u0251 Lovelace", FULLWIDTH_NAME, "Ade\u0301le", "Zoë"]
    tokens = []
    for name in names:
        response = client.post("/v1/tokens", json={"kind": "name", "value": name}, headers=auth(api_keys["checkout"]))
        assert response.status_code == 201, (name, response.data)
        tokens.append(response.get_json()["token"])
    answer = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "legal"}, headers=auth(officer))
    values = [result["value"] for result in answer.get_json()["results"]]
    assert values == [unicodedata.normalize("NFC", name) for name in names]
    assert "Ada Lovelace" not in values
    # Digits and letters from other scripts never pass for a PAN, a CVV or a country code.
    for body in ({"kind": "card", "value": {**CARD, "pan": _shifted(PAN, 0xFF10)}},
                 {"kind": "card", "value": {**CARD, "pan": _shifted(PAN, 0x0660)}},
                 {"kind": "cvv", "value": "\uff11\uff12\uff13"},
                 {"kind": "address", "value": {**ADDRESS, "country": "\uff27\uff22"}},
                 {"kind": "address", "value": {**ADDRESS, "country": "G\u0392"}}):
        assert_clean_refusal(client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"])), body, 422)


# -- structure and types --------------------------------------------------------------------------


def test_batches_over_1000_items_are_refused(client: FlaskClient, api_keys: dict[str, str],
                                             components: Components) -> None:
    before = snapshot(components.engine)["tokens"]
    items = [{"kind": "email", "value": f"user{i}@example.com"} for i in range(1001)]
    response = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    assert assert_clean_refusal(response, items, 422)["field"] == "items"
    tokens = [f"tok_email_{i:032d}" for i in range(1001)]
    response = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "support"},
                           headers=auth(api_keys["support"]))
    assert assert_clean_refusal(response, tokens, 422)["field"] == "tokens"
    assert snapshot(components.engine)["tokens"] == before
    response = client.post("/v1/tokens/batch", json={"items": items[:1000]}, headers=auth(api_keys["checkout"]))
    assert response.status_code == 200 and len(response.get_json()["results"]) == 1000
    assert snapshot(components.engine)["tokens"] == before + 1000


def test_duplicate_json_keys_take_one_consistent_reading(client: FlaskClient, api_keys: dict[str, str]) -> None:
    """Python's JSON keeps the last duplicate; whatever the reading, it is one, and nothing leaks."""
    raw = b'{"kind": "card", "kind": "email", "value": "' + EMAIL.encode() + b'"}'
    response = client.post("/v1/tokens", data=raw, content_type="application/json", headers=auth(api_keys["checkout"]))
    assert response.status_code in (201, 422)
    if response.status_code == 201:
        assert response.get_json()["kind"] == "email"
    raw = (b'{"kind": "card", "value": {"pan": "' + PAN.encode() + b'", "pan": "' + AMEX.encode()
           + b'", "exp_month": 12, "exp_year": 2099}}')
    response = client.post("/v1/tokens", data=raw, content_type="application/json", headers=auth(api_keys["checkout"]))
    assert response.status_code in (201, 422)
    if response.status_code == 201:
        assert response.get_json()["metadata"]["last4"] == AMEX[-4:]
    else:
        assert_clean_refusal(response, [PAN, AMEX], 422)
    raw = b'{"tokens": ["0000000000001111"], "purpose": "payment", "purpose": "legal"}'
    response = client.post("/v1/detokenize", data=raw, content_type="application/json",
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 200
    assert response.get_json()["results"][0]["error"]["code"] == "not_found"


WRONG_TYPES: tuple[dict[str, Any], ...] = (
    {"kind": "card", "value": {**CARD, "exp_month": "12"}},
    {"kind": "card", "value": {**CARD, "exp_year": "2099"}},
    {"kind": "card", "value": {**CARD, "exp_year": 2099.0}},
    {"kind": "card", "value": {**CARD, "exp_month": True}},
    {"kind": "card", "value": {**CARD, "pan": int(PAN)}},
    {"kind": "card", "value": {**CARD, "pan": float(PAN)}},
    {"kind": "cvv", "value": int(CVV)},
    {"kind": "phone", "value": 14155552671},
    {"kind": "text", "value": 12345678901234},
    {"kind": "text", "value": ["a", "b"]},
    {"kind": "text", "value": {"text": "a"}},
    {"kind": "text", "value": None},
    {"kind": "text", "value": True},
    {"kind": 1, "value": "x"},
    {"kind": "text", "value": "x", "ttl_seconds": "600"},
    {"kind": "text", "value": "x", "ttl_seconds": 600.0},
    {"kind": "text", "value": "x", "ttl_seconds": 600.5},
    {"kind": "text", "value": "x", "ttl_seconds": True},
    {"kind": "text", "value": "x", "subject_id": 42},
    {"kind": "address", "value": {**ADDRESS, "postal_code": 10001}},
)


def test_numbers_as_strings_and_strings_as_numbers(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for body in WRONG_TYPES:
        response = client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"]))
        assert response.status_code == 422, (body, response.status_code)
        assert assert_clean_refusal(response, [], 422)["code"] == "invalid_input"
        for number in (PAN, "14155552671", "12345678901234", "4.111111111111111e+15", "4111111111111111.0"):
            assert number not in response.get_data(as_text=True), body
    response = client.post("/v1/detokenize", json={"tokens": [1234567890123], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    assert assert_clean_refusal(response, [], 422)["field"].startswith("tokens")


def test_non_finite_and_huge_numbers(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for raw in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" * 5000, b"-0", b"0x10", b"1_000"):
        for template in (b'{"kind": "text", "value": "x", "ttl_seconds": %s}',
                         b'{"kind": "card", "value": {"pan": "4111111111111111", "exp_month": %s, "exp_year": 2099}}',
                         b'{"kind": "cvv", "value": %s}'):
            response = client.post("/v1/tokens", data=template % raw, content_type="application/json",
                                   headers=auth(api_keys["checkout"]))
            assert response.status_code == 422, (raw[:20], template, response.status_code)
            assert_clean_refusal(response, [PAN], 422)


def test_negative_and_huge_ttl_seconds(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for kind, ttl in (("text", -1), ("text", 0), ("text", -(2**63)), ("text", 315_360_001), ("text", 2**63),
                      ("text", 10**30), ("cvv", 3601), ("cvv", 0), ("cvv", -600), ("cvv", 2**64)):
        value = CVV if kind == "cvv" else "hello"
        response = client.post("/v1/tokens", json={"kind": kind, "value": value, "ttl_seconds": ttl},
                               headers=auth(api_keys["checkout"]))
        assert response.status_code == 422, (kind, ttl, response.status_code)
        assert assert_clean_refusal(response, [], 422)["field"] == "ttl_seconds"


def test_largest_ttl_is_accepted(client: FlaskClient, api_keys: dict[str, str]) -> None:
    response = client.post("/v1/tokens", json={"kind": "text", "value": "hello", "ttl_seconds": 315_360_000},
                           headers=auth(api_keys["checkout"]))
    assert response.status_code == 201 and response.get_json()["expires_at"]
    response = client.post("/v1/tokens", json={"kind": "cvv", "value": CVV, "ttl_seconds": 3600},
                           headers=auth(api_keys["checkout"]))
    assert response.status_code == 201


def test_deterministic_must_be_a_boolean(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for flag in ("true", "false", "1", 1, 0, None, [], {}, "yes", 1.0):
        response = client.post("/v1/tokens", json={"kind": "email", "value": EMAIL, "deterministic": flag},
                               headers=auth(api_keys["checkout"]))
        assert response.status_code == 422, (flag, response.status_code)
        assert assert_clean_refusal(response, [EMAIL], 422)["field"] == "deterministic"


# -- bugs: submitted values echoed in error bodies -------------------------------------------------


def test_pan_as_an_unknown_top_level_key_is_not_echoed(client: FlaskClient, api_keys: dict[str, str]) -> None:
    body = {"kind": "card", "value": CARD, PAN: "x"}
    response = client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"]))
    assert response.status_code == 422
    assert PAN not in response.get_data(as_text=True)
    batch = client.post("/v1/tokens/batch", json={"items": [body]}, headers=auth(api_keys["checkout"]))
    assert PAN not in batch.get_data(as_text=True)


def test_unknown_key_inside_a_value_is_not_echoed(client: FlaskClient, api_keys: dict[str, str]) -> None:
    leaked = []
    for secret in (PAN, EMAIL, HOLDER, PAN_SPACED):
        for body in ({"kind": "card", "value": {**CARD, secret: 1}},
                     {"kind": "address", "value": {**ADDRESS, secret: 1}}):
            response = client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"]))
            assert response.status_code == 422
            if secret in response.get_data(as_text=True):
                leaked.append((body["kind"], secret))
    assert not leaked, leaked


# -- bugs: authorization after validation, audit trail abuse ---------------------------------------


def test_role_without_tokenize_is_refused_and_audited_whatever_the_body(client: FlaskClient,
                                                                         api_keys: dict[str, str],
                                                                         components: Components) -> None:
    auditor = components.clients.create("attack-siem", "audit_export")[1].expose()
    attempts = [("/v1/tokens", {"kind": "email"}), ("/v1/tokens/batch", {"items": [{"kind": "email"}]}),
                ("/v1/tokens", {"kind": "card", "value": {"pan": "1"}})]
    statuses = []
    for path, body in attempts:
        for key in (auditor, api_keys["shipping"]):
            statuses.append(client.post(path, json=body, headers=auth(key)).status_code)
    with components.engine.connect() as conn:
        denied = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.action == "tokenize", audit_events.c.outcome == "denied")).scalar_one()
    assert statuses == [403] * len(statuses)
    assert denied == len(statuses)


def test_pan_as_audit_filter_is_not_written_to_the_trail(client: FlaskClient, components: Components) -> None:
    auditor = components.clients.create("attack-siem", "audit_export")[1].expose()
    for name in ("token", "subject_id"):
        response = client.get("/v1/audit/events", query_string={name: PAN}, headers=auth(auditor))
        assert response.status_code in (200, 422)
        assert PAN not in response.get_data(as_text=True)
    with components.engine.connect() as conn:
        rows = [json.dumps([str(v) for v in row]) for row in conn.execute(select(audit_events)).all()]
    assert not [row for row in rows if PAN in row]


def test_odd_audit_filters_never_answer_5xx(client: FlaskClient, components: Components, database_url: str,
                                            request: pytest.FixtureRequest) -> None:
    auditor = components.clients.create("attack-siem", "audit_export")[1].expose()
    statuses = {}
    for name, value in (("token", "t" * 100), ("actor", "\x00"), ("token", "tok_\x00"), ("subject_id", "s" * 128),
                        ("action", "a\x00b"), ("since", "2026-01-01T00:00:00\x00")):
        response = client.get("/v1/audit/events", query_string={name: value}, headers=auth(auditor))
        statuses[(name, value[:8])] = response.status_code
    assert all(status in (200, 422) for status in statuses.values()), statuses


def test_nul_in_user_agent_still_audits_failed_authentication(
    client: FlaskClient, components: Components, database_url: str, request: pytest.FixtureRequest
) -> None:
    """Gunicorn refuses NUL in header values, so this needs another front end to be reached; still, the
    app must not lose a failed-authentication event because of what a client put in a header."""
    for user_agent in ("scanner\x00", "ok"):
        response = client.post("/v1/tokens", json={"kind": "email", "value": EMAIL},
                               headers={"Authorization": "Bearer tvk_guess", "User-Agent": user_agent})
        assert response.status_code == 401
    components.trail.flush_failures(force=True)  # counted per source and window, then one event
    with components.engine.connect() as conn:
        failed = conn.execute(select(audit_events.c.detail).where(
            audit_events.c.action == "authenticate", audit_events.c.outcome == "denied")).scalars().all()
    assert len(failed) == 1 and failed[0].startswith("count=2 ")
