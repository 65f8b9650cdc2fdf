"""SSRF through the relay: a route that is not internal reaches no loopback or private address,
however it is named, and route validation refuses unsafe configurations with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.wiring import Components
from tests.api.http.test_relay import make_route, relay, route_doc
from tests.conftest import auth
from tests.support.upstream import CertificateAuthority, Upstream
from vault.audit.trail import HOST, Origin
from vault.errors import ValidationFailed


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def upstream(ca: CertificateAuthority) -> Iterator[Upstream]:
    server = Upstream(ca).start()
    yield server
    server.stop()


def test_a_name_resolving_to_loopback_is_refused_on_a_route_not_marked_internal(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca, upstream=upstream.url("localhost"), internal=False))
    response = relay(client, api_keys["payment_gateway"], json={})
    assert response.status_code == 422 and "private, loopback" in response.get_json()["error"]["message"]
    assert upstream.seen == []
    # the same route marked internal by an admin reaches it (pinned to the checked address)
    make_route(components, route_doc(upstream, ca, upstream=upstream.url("localhost"), internal=True))
    assert relay(client, api_keys["payment_gateway"], json={}).status_code == 200
    assert upstream.seen[-1].headers["host"] == f"localhost:{upstream.port}"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "10.0.0.1", "169.254.169.254", "[::ffff:127.0.0.1]",
                                  "192.168.0.1"])
def test_ip_literals_that_are_not_public_are_refused_when_the_route_is_created(
        components: Components, upstream: Upstream, ca: CertificateAuthority, host: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        make_route(components, route_doc(upstream, ca, upstream=f"https://{host}:{upstream.port}", internal=False))
    assert refused.value.field == "route" or "upstream" in refused.value.rule


@pytest.mark.parametrize(("changes", "reason"), [
    ({"upstream": "http://api.example.com"}, "https"),
    ({"upstream": "https://api.example.com@127.0.0.1"}, "credentials"),
    ({"upstream": "https://2130706433"}, "invalid IP literal"),
    ({"roles": ["admin"]}, "never see plaintext"),
    ({"roles": ["checkout"]}, "may detokenize"),
    ({"roles": []}, "roles and purposes"),
    ({"substitute": {"header": ["cvv"]}}, "CVV may never travel in a header"),
    ({"forward_headers": ["authorization"]}, "may not be relayed"),
    ({"forward_headers": ["host"]}, "may not be relayed"),
    ({"paths": ["/v1/../admin"]}, "pattern"),
    ({"auth": {"type": "bearer"}}, "bearer secret"),
    ({"auth": {"type": "mtls", "client_cert_pem": "x", "client_key_pem": "y"}}, "PEM"),
    ({"ca_pem": "not a certificate"}, "PEM"),
    ({"timeout": 3600}, "less than or equal"),
    ({"response_fields": [{"path": "email", "action": "tokenize", "kind": "email"}]}, "tokenize_role"),
    ({"extra": 1}, "Extra inputs"),
])
def test_unsafe_routes_are_refused_with_the_reason(components: Components, upstream: Upstream,
                                                   ca: CertificateAuthority, changes: dict[str, Any],
                                                   reason: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        components.relay_routes.propose(HOST, route_doc(upstream, ca, **changes), Origin())
    assert reason in f"{refused.value.field} {refused.value.rule}", refused.value


def test_path_traversal_out_of_the_pattern_never_reaches_the_upstream(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca, paths=["/v1/customers/*/cards"]))
    key = api_keys["payment_gateway"]
    for path in ["v1/customers/../admin/cards", "v1/customers/%2e%2e/cards", "v1/customers/a%2Fb/cards",
                 "v1/customers/x/cards/../../../../admin", "v1/admin"]:
        response = relay(client, key, path, json={})
        assert response.status_code in (404, 422), path
    assert upstream.seen == []
    # a query string travels as the caller encoded it: an encoded CR/LF stays encoded, never a header
    response = client.post("/v1/relay/psp/v1/customers/c1/cards?x=%0d%0aHost:%20evil", json={},
                           headers={**auth(key), "X-TokenVault-Purpose": "payment"})
    assert response.status_code == 200
    assert upstream.seen[-1].path.lower() == "/v1/customers/c1/cards?x=%0d%0ahost:%20evil"
    assert upstream.seen[-1].headers["host"] == f"127.0.0.1:{upstream.port}"
