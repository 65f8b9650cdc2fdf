"""The README's relay example against the real server (gunicorn) and a real HTTPS upstream:
a checkout page posts a card through the inbound route; the payment service charges it outbound."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.support.server import running_server
from tests.support.upstream import PAN, CertificateAuthority, Upstream


def test_checkout_then_charge_through_the_relay(tmp_path: Path, sqlite_url: str) -> None:
    ca = CertificateAuthority()
    psp = Upstream(ca).start()
    try:
        with running_server(tmp_path / "data", TOKENVAULT_DATABASE_URL=sqlite_url) as server:
            inbound = {"name": "checkout", "direction": "inbound", "upstream": psp.url(), "internal": True,
                       "ca_pem": ca.pem, "paths": ["/orders"], "tokenize_role": "checkout",
                       "allowed_origins": ["https://shop.example"],
                       "inbound_fields": [{"path": "card", "kind": "card"}, {"path": "cvc", "kind": "cvv"}]}
            outbound = {"name": "psp", "direction": "outbound", "upstream": psp.url(), "internal": True,
                        "ca_pem": ca.pem, "paths": ["/v1/charges"], "roles": ["payment_gateway"],
                        "purposes": ["payment"], "substitute": {"body": ["card", "cvv"]},
                        "auth": {"type": "bearer", "bearer": "sk_test_e2e_0123456789"}}
            key = json.loads(server.cli("relay", "routes", "create", "-", stdin=json.dumps(inbound)))["publishable_key"]
            server.cli("relay", "routes", "create", "-", stdin=json.dumps(outbound))
            order = requests.post(f"{server.url}/v1/inbound/checkout/orders", timeout=10, json={
                "card": {"pan": PAN, "exp_month": 12, "exp_year": 2030}, "cvc": "123", "amount": 1000},
                headers={"X-TokenVault-Publishable-Key": key, "Origin": "https://shop.example"})
            assert order.status_code == 200, order.text
            received = json.loads(json.loads(order.text)["body"])  # what the merchant's backend got
            assert PAN not in order.text and received["cvc"].startswith("tok_cvv_")
            gateway = server.client_key("payment_gateway")
            charge = requests.post(f"{server.url}/v1/relay/psp/v1/charges", timeout=10, headers={
                "Authorization": f"Bearer {gateway}"}, json={
                "amount": 1000, "number": f"{{{{tokenvault:{received['card']}:pan}}}}",
                "exp": f"{{{{tokenvault:{received['card']}:exp_month2}}}}/"
                       f"{{{{tokenvault:{received['card']}:exp_year2}}}}",
                "cvc": f"{{{{tokenvault:{received['cvc']}:cvv}}}}"})
            assert charge.status_code == 200, charge.text
            assert json.loads(psp.seen[-1].body) == {"amount": 1000, "number": PAN, "exp": "12/30", "cvc": "123"}
            assert PAN not in charge.text and "sk_test_e2e" not in charge.text
            again = requests.post(f"{server.url}/v1/relay/psp/v1/charges", timeout=10, headers={
                "Authorization": f"Bearer {gateway}"}, json={"cvc": f"{{{{tokenvault:{received['cvc']}:cvv}}}}"})
            assert again.status_code == 404  # the CVV was read once
    finally:
        psp.stop()
