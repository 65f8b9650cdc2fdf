"""The HTTP API through the Flask test client, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from flask.testing import FlaskClient
from sqlalchemy import select

from api.wiring import Components
from tests.conftest import auth
from vault.storage.schema import audit_events

CARD = {"pan": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2099}
PAN = "4111111111111111"


def tokenize(client: FlaskClient, key: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    response = client.post("/v1/tokens", json=body, headers=auth(key))
    return response.status_code, response.get_json()


def test_tokenize_and_detokenize_a_card(client: FlaskClient, api_keys: dict[str, str]) -> None:
    status, body = tokenize(client, api_keys["checkout"], {"kind": "card", "value": CARD})
    assert status == 201
    assert body["kind"] == "card" and body["metadata"]["last4"] == "1111" and body["metadata"]["brand"] == "visa"
    token = body["token"]
    response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 200
    assert response.get_json() == {"results": [{"token": token, "kind": "card", "view": "plain",
                                                "value": {"pan": PAN, "exp_month": 12, "exp_year": 2099}}]}
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Request-ID"]


def test_metadata_and_delete(client: FlaskClient, api_keys: dict[str, str]) -> None:
    _, body = tokenize(client, api_keys["checkout"], {"kind": "card", "value": CARD})
    token = body["token"]
    meta = client.get(f"/v1/tokens/{token}", headers=auth(api_keys["support"]))
    assert meta.status_code == 200 and meta.get_json()["metadata"]["last4"] == "1111"
    assert PAN not in meta.get_data(as_text=True)
    assert client.delete(f"/v1/tokens/{token}", headers=auth(api_keys["support"])).status_code == 403
    assert client.delete(f"/v1/tokens/{token}", headers=auth(api_keys["checkout"])).status_code == 204
    assert client.get(f"/v1/tokens/{token}", headers=auth(api_keys["checkout"])).status_code == 404


def test_unauthenticated_request_is_refused_and_audited(client: FlaskClient, components: Components) -> None:
    for headers in ({}, {"Authorization": "Bearer tvk_not-a-key"}, {"Authorization": "Basic abc"}):
        response = client.post("/v1/tokens", json={"kind": "card", "value": CARD}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthenticated"
    components.trail.flush_failures(force=True)  # counted per source, then one event per window
    with components.engine.connect() as conn:
        denied = conn.execute(select(audit_events.c.action, audit_events.c.detail)
                              .where(audit_events.c.outcome == "denied")).all()
    assert [(row.action, row.detail.split()[0]) for row in denied] == [("authenticate", "count=3")]


def test_revoked_client_is_refused(components: Components, client: FlaskClient) -> None:
    client_id, key = components.clients.create("temp", "checkout")
    assert tokenize(client, key.expose(), {"kind": "email", "value": "a@example.com"})[0] == 201
    components.clients.revoke(client_id)
    assert tokenize(client, key.expose(), {"kind": "email", "value": "a@example.com"})[0] == 401


def test_checkout_may_not_detokenize(client: FlaskClient, api_keys: dict[str, str]) -> None:
    _, body = tokenize(client, api_keys["checkout"], {"kind": "card", "value": CARD})
    response = client.post("/v1/detokenize", json={"tokens": [body["token"]], "purpose": "payment"},
                           headers=auth(api_keys["checkout"]))
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert client.post("/v1/tokens", json={"kind": "email", "value": "a@example.com"},
                       headers=auth(api_keys["payment_gateway"])).status_code == 403


def test_forbidden_token_answers_like_missing_token(client: FlaskClient, api_keys: dict[str, str]) -> None:
    """No existence oracle: a card the shipper may not read looks exactly like no card."""
    _, body = tokenize(client, api_keys["checkout"], {"kind": "card", "value": CARD})
    real, fake = body["token"], "0000000000001111"
    answers = []
    for token in (real, fake):
        response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "fulfillment"},
                               headers=auth(api_keys["shipping"]))
        result = response.get_json()["results"][0]
        answers.append((response.status_code, result["error"]))
    assert answers[0] == answers[1] == (200, {"code": "not_found", "message": "token not found"})
    meta = [client.get(f"/v1/tokens/{t}", headers=auth(api_keys["payment_gateway"])) for t in (real, fake)]
    assert meta[0].status_code == 200
    cvv = tokenize(client, api_keys["checkout"], {"kind": "cvv", "value": "123"})[1]["token"]
    missing = "tok_cvv_" + "A" * 32
    bodies = [client.get(f"/v1/tokens/{t}", headers=auth(api_keys["payment_gateway"])) for t in (cvv, missing)]
    assert [b.status_code for b in bodies] == [404, 404]
    assert bodies[0].get_json() == bodies[1].get_json()


def test_validation_errors_never_echo_the_value(client: FlaskClient, api_keys: dict[str, str]) -> None:
    bad_pan = "4111111111111112"
    cases = [
        ({"kind": "card", "value": {**CARD, "pan": bad_pan}}, "value.pan"),
        ({"kind": "card", "value": {**CARD, "exp_month": 13}}, "value.exp_month"),
        ({"kind": "card", "value": {**CARD, "cvc": "123"}}, "value.cvc"),
        ({"kind": "cvv", "value": "12345"}, "value"),
        ({"kind": "email", "value": "secret-person@@example.com"}, "value"),
        ({"kind": "card", "value": CARD, "colour": "red"}, "colour"),
        ({"kind": "pan", "value": bad_pan}, "kind"),
        ({"kind": "phone", "value": "+1 999 4111111111111111"}, "value"),
    ]
    for body, field in cases:
        status, answer = tokenize(client, api_keys["checkout"], body)
        assert status == 422, body
        assert answer["error"]["code"] == "invalid_input" and answer["error"]["field"] == field
        text = json.dumps(answer)
        for needle in (bad_pan, "secret-person", "4111111111111111", "12345"):
            assert needle not in text


def test_pan_where_token_expected_is_refused_without_echo(client: FlaskClient, api_keys: dict[str, str]) -> None:
    response = client.post("/v1/detokenize", json={"tokens": [PAN], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 200
    result = response.get_json()["results"][0]
    assert result["token"] is None and result["error"]["code"] == "invalid_input"
    assert PAN not in response.get_data(as_text=True)
    meta = client.get(f"/v1/tokens/{PAN}", headers=auth(api_keys["checkout"]))
    assert meta.status_code == 422 and PAN not in meta.get_data(as_text=True)


def test_malformed_bodies(client: FlaskClient, api_keys: dict[str, str]) -> None:
    headers = {**auth(api_keys["checkout"]), "Content-Type": "application/json"}
    assert client.post("/v1/tokens", data="{not json", headers=headers).status_code == 422
    assert client.post("/v1/tokens", data=b"\xff\xfe", headers=headers).status_code == 415  # not UTF-8
    assert client.post("/v1/tokens", data="[" * 100_000, headers=headers).status_code == 422
    assert client.post("/v1/tokens", data="x=1", headers={**auth(api_keys["checkout"]),
                       "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415


def test_oversized_body_is_refused(client: FlaskClient, api_keys: dict[str, str]) -> None:
    body = json.dumps({"kind": "text", "value": "x" * (6 * 1024 * 1024)})
    response = client.post("/v1/tokens", data=body, headers={**auth(api_keys["checkout"]),
                                                             "Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"


def test_batch_results_per_item_in_order(client: FlaskClient, api_keys: dict[str, str]) -> None:
    items = [{"kind": "card", "value": CARD}, {"kind": "card", "value": {**CARD, "pan": "1234"}},
             {"kind": "nope", "value": 1}, {"kind": "email", "value": "a@example.com"}]
    response = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 4
    assert "token" in results[0] and "token" in results[3]
    assert results[1]["error"]["field"] == "value.pan"
    assert results[2]["error"]["field"] == "items.2.kind"


def test_batch_limit_is_1000(client: FlaskClient, api_keys: dict[str, str]) -> None:
    items = [{"kind": "email", "value": f"u{i}@example.com"} for i in range(1001)]
    response = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "items"
    many = client.post("/v1/detokenize", json={"tokens": ["x"] * 1001, "purpose": "payment"},
                       headers=auth(api_keys["payment_gateway"]))
    assert many.status_code == 422


def test_batch_of_1000_cards(client: FlaskClient, api_keys: dict[str, str]) -> None:
    items = [{"kind": "card", "value": CARD} for _ in range(1000)]
    response = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    tokens = [r["token"] for r in response.get_json()["results"]]
    assert len(set(tokens)) == 1000
    read = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "payment"},
                       headers=auth(api_keys["payment_gateway"]))
    assert {r["value"]["pan"] for r in read.get_json()["results"]} == {PAN}


def test_unknown_purpose_is_refused(client: FlaskClient, api_keys: dict[str, str]) -> None:
    response = client.post("/v1/detokenize", json={"tokens": ["x"], "purpose": "curiosity"},
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "purpose"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_openapi_document(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert set(document["paths"]) >= {"/v1/tokens", "/v1/tokens/batch", "/v1/detokenize", "/v1/tokens/{token}"}
    card = document["components"]["schemas"]["TokenizeCard"]
    assert card["additionalProperties"] is False


def test_unknown_endpoint_is_json(client: FlaskClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "no_such_endpoint"


def test_maestro_and_other_published_test_numbers_tokenize_with_their_brand(client: FlaskClient,
                                                                            api_keys: dict[str, str]) -> None:
    """Issue #19: real Maestro numbers (any 50/56-69 prefix, 12 to 19 digits) were refused as no brand."""
    from tests.vault.tokens.test_cards import with_check_digit

    vectors = [("6304000000000000", "maestro"), ("6799990100000000019", "maestro"),
               (with_check_digit("6705", 16), "maestro"), (with_check_digit("5924", 16), "maestro"),
               (with_check_digit("639029", 12), "maestro"), ("6205500000000000004", "unionpay"),
               (with_check_digit("622126", 16), "discover")]
    for pan, brand in vectors:
        status, body = tokenize(client, api_keys["checkout"],
                                {"kind": "card", "value": {"pan": pan, "exp_month": 12, "exp_year": 2099}})
        assert status == 201, (pan, body)
        assert body["metadata"]["brand"] == brand and body["metadata"]["last4"] == pan[-4:]
        assert len(str(body["token"])) == len(pan)
