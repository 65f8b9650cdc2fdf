"""The inbound relay: a checkout page posts a card with a publishable key; the merchant gets tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.wiring import Components
from tests.conftest import auth
from tests.support.upstream import PAN, CertificateAuthority, Upstream
from vault.audit.trail import HOST, Origin

SHOP = "https://shop.example"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def merchant(ca: CertificateAuthority) -> Iterator[Upstream]:
    server = Upstream(ca).start()
    yield server
    server.stop()


def inbound_doc(server: Upstream, ca: CertificateAuthority, **changes: Any) -> dict[str, Any]:
    return {"name": "checkout", "direction": "inbound", "upstream": server.url(), "internal": True, "ca_pem": ca.pem,
            "methods": ["POST"], "paths": ["/orders"], "tokenize_role": "checkout", "allowed_origins": [SHOP],
            "inbound_fields": [{"path": "card", "kind": "card"}, {"path": "cvc", "kind": "cvv"},
                               {"path": "customer.email", "kind": "email"}],
            "auth": {"type": "bearer", "bearer": "merchant-shared-secret-0001"}, **changes}


@pytest.fixture
def publishable(components: Components, merchant: Upstream, ca: CertificateAuthority) -> str:
    key = components.relay_routes.propose(HOST, inbound_doc(merchant, ca), Origin()).publishable_key
    assert key is not None and key.startswith("pk_")
    return key


ORDER = {"card": {"pan": PAN, "exp_month": 12, "exp_year": 2030}, "cvc": "123",
         "customer": {"email": "jane@example.com", "name": "Jane"}, "amount": 1000}


def post(client: FlaskClient, key: str | None, body: Any = ORDER, origin: str | None = SHOP) -> Any:
    headers = {**({"X-TokenVault-Publishable-Key": key} if key else {}), **({"Origin": origin} if origin else {})}
    return client.post("/v1/inbound/checkout/orders", json=body, headers=headers)


def test_the_merchant_gets_tokens_and_never_the_values(client: FlaskClient, merchant: Upstream,
                                                       publishable: str, api_keys: dict[str, str]) -> None:
    response = post(client, publishable)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Access-Control-Allow-Origin"] == SHOP
    sent = json.loads(merchant.seen[-1].body)
    assert PAN not in merchant.seen[-1].body.decode() and "jane@example.com" not in merchant.seen[-1].body.decode()
    assert sent["cvc"].startswith("tok_cvv_") and sent["customer"]["email"].startswith("tok_email_")
    assert sent["amount"] == 1000 and sent["customer"]["name"] == "Jane" and sent["card"].endswith("1111")
    assert merchant.seen[-1].headers["authorization"] == "Bearer merchant-shared-secret-0001"
    # the payment service can charge the card token through the vault (it reads as the card)
    found = client.post("/v1/detokenize", json={"tokens": [sent["card"], sent["cvc"]], "purpose": "payment"},
                        headers=auth(api_keys["payment_gateway"])).get_json()
    assert found["results"][0]["value"]["pan"] == PAN and found["results"][1]["value"] == "123"


def test_a_publishable_key_does_nothing_else(client: FlaskClient, merchant: Upstream, publishable: str) -> None:
    assert post(client, "pk_wrong").status_code == 401
    assert post(client, None).status_code == 401
    assert client.post("/v1/tokens", json={"kind": "text", "value": "x"}, headers=auth(publishable)).status_code == 401
    assert client.post("/v1/relay/psp/x", json={}, headers=auth(publishable)).status_code == 401
    assert client.post("/v1/inbound/other/orders", json=ORDER, headers={
        "X-TokenVault-Publishable-Key": publishable, "Origin": SHOP}).status_code == 401
    assert merchant.seen == []


def test_origins_paths_and_stray_card_numbers_are_refused(client: FlaskClient, merchant: Upstream,
                                                          publishable: str) -> None:
    assert post(client, publishable, origin="https://evil.example").status_code == 403
    assert post(client, publishable, origin=None).status_code == 403
    stray = post(client, publishable, {**ORDER, "notes": f"my card is {PAN}"})
    assert stray.status_code == 422 and PAN not in stray.get_data(as_text=True)
    bad = post(client, publishable, {**ORDER, "card": {"pan": "4111111111111112", "exp_month": 1, "exp_year": 2030}})
    assert bad.status_code == 422 and "4111111111111112" not in bad.get_data(as_text=True)
    other = client.post("/v1/inbound/checkout/admin", json=ORDER, headers={
        "X-TokenVault-Publishable-Key": publishable, "Origin": SHOP})
    assert other.status_code == 422
    assert merchant.seen == []


def test_cors_preflight_answers_only_allowed_origins(client: FlaskClient, publishable: str) -> None:
    ok = client.options("/v1/inbound/checkout/orders", headers={"Origin": SHOP,
                                                                "Access-Control-Request-Method": "POST"})
    assert ok.status_code == 204 and ok.headers["Access-Control-Allow-Origin"] == SHOP
    assert "X-TokenVault-Publishable-Key" in ok.headers["Access-Control-Allow-Headers"]
    no = client.options("/v1/inbound/checkout/orders", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in no.headers


def test_the_merchant_answer_is_protected_too(client: FlaskClient, components: Components,
                                              ca: CertificateAuthority) -> None:
    echo = Upstream(ca, behaviour="pan").start()
    try:
        key = components.relay_routes.propose(HOST, inbound_doc(echo, ca), Origin()).publishable_key
        response = post(client, key)
    finally:
        echo.stop()
    assert response.status_code == 200 and PAN not in response.get_data(as_text=True)
