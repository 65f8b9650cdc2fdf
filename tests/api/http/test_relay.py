"""The relay over HTTP against real HTTPS upstreams on loopback (their own CA; one needs mTLS).

Routes here are marked internal (tests' upstreams live on loopback); test_relay_ssrf.py shows a
route that is not internal refusing every way of naming loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from api.http import metrics
from api.http.app import create_app
from api.wiring import Components
from tests.conftest import auth, make_components
from tests.support.upstream import PAN, CertificateAuthority, Upstream
from vault.audit.trail import HOST, Origin
from vault.storage.schema import audit_events, tokens


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority()


@pytest.fixture
def upstream(ca: CertificateAuthority) -> Iterator[Upstream]:
    server = Upstream(ca).start()
    yield server
    server.stop()


def route_doc(server: Upstream, ca: CertificateAuthority, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "psp", "direction": "outbound", "upstream": server.url(), "internal": True, "ca_pem": ca.pem,
        "methods": ["POST"], "paths": ["/v1/charges", "/v1/customers/*/cards"],
        "roles": ["payment_gateway", "shipping"], "purposes": ["payment", "fulfillment"],
        "substitute": {"body": ["card", "cvv", "address"], "header": ["card"]},
        "forward_headers": ["idempotency-key", "x-card-number"], "return_headers": ["x-request-seen", "x-card"],
        "auth": {"type": "bearer", "bearer": "sk_test_0123456789abcdef"},
    }
    doc.update(changes)
    return doc


def make_route(components: Components, doc: dict[str, Any]) -> None:
    components.relay_routes.propose(HOST, doc, Origin())


def tokenize(client: FlaskClient, key: str, kind: str, value: Any) -> str:
    response = client.post("/v1/tokens", json={"kind": kind, "value": value}, headers=auth(key))
    assert response.status_code == 201, response.get_json()
    token: str = response.get_json()["token"]
    return token


CARD = {"pan": PAN, "exp_month": 12, "exp_year": 2030, "holder": "Jane \"Q\" Doe"}


def relay(client: FlaskClient, key: str, path: str = "v1/charges", *, purpose: str = "payment",
          headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return client.post(f"/v1/relay/psp/{path}", headers={**auth(key), "X-TokenVault-Purpose": purpose,
                                                         **(headers or {})}, **kwargs)


def test_json_body_is_filled_escaped_and_sent_with_the_route_credentials(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", CARD)
    month, year = f"{{{{tokenvault:{card}:exp_month2}}}}", f"{{{{tokenvault:{card}:exp_year2}}}}"
    body = {"amount": 1000, "card": {"number": f"{{{{tokenvault:{card}:pan}}}}",
                                     "holder": f"{{{{tokenvault:{card}:holder}}}}", "exp": f"{month}/{year}"},
            "note": "{{ handlebars stays }}"}
    response = relay(client, api_keys["payment_gateway"], json=body, headers={"Idempotency-Key": "abc"})
    assert response.status_code == 200, response.get_json()
    seen = upstream.seen[-1]
    sent = json.loads(seen.body)
    assert sent["card"] == {"number": PAN, "holder": 'Jane "Q" Doe', "exp": "12/30"}
    assert sent["note"] == "{{ handlebars stays }}" and sent["amount"] == 1000
    assert seen.headers["authorization"] == "Bearer sk_test_0123456789abcdef"
    assert seen.headers["idempotency-key"] == "abc" and seen.path == "/v1/charges"
    assert "x-tokenvault-purpose" not in seen.headers
    # The caller's answer: upstream status, filtered headers, and no PAN (the echo carried one back).
    assert PAN not in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers and response.headers["X-Request-Seen"] == "1"
    assert not response.get_data(as_text=True).count("sk_test_")


def test_form_and_header_contexts(client: FlaskClient, components: Components, api_keys: dict[str, str],
                                  upstream: Upstream, ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", {**CARD, "holder": "A&B=C D"})
    form = {"card[number]": f"{{{{tokenvault:{card}:pan}}}}", "card[name]": f"{{{{tokenvault:{card}:holder}}}}"}
    response = relay(client, api_keys["payment_gateway"], data=form,
                     headers={"X-Card-Number": f"{{{{tokenvault:{card}:pan}}}}"})
    assert response.status_code == 200, response.get_json()
    seen = upstream.seen[-1]
    assert seen.body == b"card%5Bnumber%5D=" + PAN.encode() + b"&card%5Bname%5D=A%26B%3DC+D"
    assert seen.headers["x-card-number"] == PAN


def test_header_injection_through_a_token_value_is_refused_and_nothing_sent(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    # Kinds refuse control characters, so the worst a value can carry is a Unicode line separator.
    card = tokenize(client, api_keys["checkout"], "card", {**CARD, "holder": "Eve\u2028Evil"})
    response = relay(client, api_keys["payment_gateway"], json={},
                     headers={"X-Card-Number": f"{{{{tokenvault:{card}:holder}}}}"})
    assert response.status_code == 422 and "Evil" not in response.get_data(as_text=True)
    assert upstream.seen == []


def test_caller_cannot_inject_headers_or_templates_where_they_do_not_belong(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", CARD)
    key = api_keys["payment_gateway"]
    cases = [
        {"json": {"x": "{{tokenvault:" + card + ":pan"}},                       # unterminated
        {"json": {"x": "{{TokenVault:" + card + ":pan}}"}},                     # other case
        {"json": {"{{tokenvault:" + card + ":pan}}": 1}},                       # in a key
        {"json": {"x": "{{tokenvault:" + card + ":cvv}}"}},                     # no such field for card
        {"data": "{{tokenvault:" + card + ":pan}}", "content_type": "text/plain"},  # not a templated type
        {"json": {}, "headers": {"X-Other": "{{tokenvault:" + card + ":pan}}"}},  # header not forwarded
    ]
    for case in cases:
        response = relay(client, key, **case)
        assert response.status_code == 422, (case, response.get_json())
    assert upstream.seen == []
    # A token's value that looks like a template is data, not a second template (one pass).
    holder = "{{tokenvault:" + card + ":pan}}"
    sneaky = tokenize(client, api_keys["checkout"], "card", {**CARD, "holder": holder})
    ok = relay(client, key, json={"h": "{{tokenvault:" + sneaky + ":holder}}"})
    assert ok.status_code == 200
    assert json.loads(upstream.seen[-1].body) == {"h": holder}


def test_kinds_roles_and_purposes_are_refused_before_anything_is_read(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", CARD)
    cvv = tokenize(client, api_keys["checkout"], "cvv", "123")
    email = tokenize(client, api_keys["checkout"], "email", "jane@example.com")
    gateway = api_keys["payment_gateway"]
    # support's role is not one the route serves: it cannot even learn the route exists
    assert relay(client, api_keys["support"], json={}).status_code == 404
    assert relay(client, api_keys["checkout"], json={}).status_code == 404
    # email may not be substituted anywhere on this route; cvv never in a header
    assert relay(client, gateway, json={"e": f"{{{{tokenvault:{email}:value}}}}"}).status_code == 403
    assert relay(client, gateway, json={}, headers={"X-Card-Number": f"{{{{tokenvault:{cvv}:cvv}}}}"}
                 ).status_code == 403
    # shipping is served by the route but may not read cards: not found, nothing sent
    shipping = relay(client, api_keys["shipping"], purpose="fulfillment", json={"n": f"{{{{tokenvault:{card}:pan}}}}"})
    assert shipping.status_code == 404
    # a purpose the route does not serve, and a path outside its patterns
    assert relay(client, gateway, purpose="marketing", json={}).status_code == 422
    assert relay(client, gateway, "v1/refunds", json={}).status_code == 422
    assert upstream.seen == []
    # the CVV refused alongside stayed unspent: it still reads once
    first = relay(client, gateway, json={"c": f"{{{{tokenvault:{cvv}:cvv}}}}", "n": f"{{{{tokenvault:{card}:pan}}}}"})
    assert first.status_code == 200 and json.loads(upstream.seen[-1].body)["c"] == "123"


def test_cvv_is_read_once_and_a_refused_call_does_not_spend_it(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    cvv = tokenize(client, api_keys["checkout"], "cvv", "987")
    gateway = api_keys["payment_gateway"]
    bad = relay(client, gateway, json={"c": f"{{{{tokenvault:{cvv}:cvv}}}}", "x": "{{tokenvault:tok_card_x:pan}}"})
    assert bad.status_code in (404, 422) and upstream.seen == []
    first = relay(client, gateway, json={"c": f"{{{{tokenvault:{cvv}:cvv}}}}"})
    assert first.status_code == 200 and json.loads(upstream.seen[-1].body) == {"c": "987"}
    second = relay(client, gateway, json={"c": f"{{{{tokenvault:{cvv}:cvv}}}}"})
    assert second.status_code == 404 and len(upstream.seen) == 1
    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == cvv)).first() is None


def test_filled_values_spend_the_detokenize_quota_before_anything_is_read(
        tmp_path: Path, sqlite_url: str, upstream: Upstream, ca: CertificateAuthority) -> None:
    """Issue #19/#20: the relay counted requests; now each token it fills in spends one value, shared with
    /v1/detokenize, and a call over quota answers 429 with a real Retry-After, reading and sending nothing."""
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_DETOKENIZE_RATE_LIMIT_PAYMENT_GATEWAY="3/minute")
    client = create_app(parts=parts).test_client()
    keys = {role: parts.clients.create(f"q-{role}", role)[1].expose() for role in ("checkout", "payment_gateway")}
    make_route(parts, route_doc(upstream, ca))
    card, other = (tokenize(client, keys["checkout"], "card", CARD) for _ in range(2))
    cvv = tokenize(client, keys["checkout"], "cvv", "123")
    two = {"n": f"{{{{tokenvault:{card}:pan}}}}", "m": f"{{{{tokenvault:{card}:exp_month}}}}",
           "o": f"{{{{tokenvault:{other}:pan}}}}"}
    assert relay(client, keys["payment_gateway"], json=two).status_code == 200  # two values (one card, two fields)
    over = relay(client, keys["payment_gateway"], json={"c": f"{{{{tokenvault:{cvv}:cvv}}}}",
                                                        "n": f"{{{{tokenvault:{card}:pan}}}}"})
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert len(upstream.seen) == 1  # nothing sent
    with parts.engine.connect() as conn:  # nothing read: the CVV is still there
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == cvv)).first() is not None
        alerts = conn.execute(select(audit_events.c.detail).where(audit_events.c.action == "rate_limit")).all()
    assert [a[0] for a in alerts] == ["limit=3 per 1 minute scope=v1.detokenize.items items=2"]
    # the third value of the minute is still there, and /v1/detokenize draws on the same quota
    assert relay(client, keys["payment_gateway"], json={"n": f"{{{{tokenvault:{card}:pan}}}}"}).status_code == 200
    refused = client.post("/v1/detokenize", json={"tokens": [card], "purpose": "payment"},
                          headers=auth(keys["payment_gateway"]))
    assert refused.status_code == 429
    assert relay(client, keys["payment_gateway"], json={}).status_code == 200  # no value, no charge
    parts.trail.close()
    parts.engine.dispose()


def test_a_changed_or_disabled_route_applies_to_the_next_call(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    """The relay remembers a route between calls: a new version (here, without the caller's role) or a
    disabled route must still govern the very next call, and a refused call sends nothing."""
    gateway = api_keys["payment_gateway"]
    make_route(components, route_doc(upstream, ca))
    assert relay(client, gateway, json={}).status_code == 200
    make_route(components, route_doc(upstream, ca, roles=["shipping"]))
    assert relay(client, gateway, json={}).status_code == 404
    assert relay(client, api_keys["shipping"], purpose="fulfillment", json={}).status_code == 200
    make_route(components, route_doc(upstream, ca, paths=["/v1/refunds"]))
    assert relay(client, gateway, json={}).status_code == 422  # the remembered pattern no longer applies
    make_route(components, route_doc(upstream, ca))
    assert relay(client, gateway, json={}).status_code == 200
    components.relay_routes.disable(HOST, "psp", Origin())
    assert relay(client, gateway, json={}).status_code == 404
    assert len(upstream.seen) == 3


def test_response_fields_are_tokenized_or_redacted_and_pans_masked(
        client: FlaskClient, components: Components, api_keys: dict[str, str], ca: CertificateAuthority) -> None:
    psp = Upstream(ca, behaviour="psp").start()
    try:
        make_route(components, {**route_doc(psp, ca), "tokenize_role": "checkout", "response_fields": [
            {"path": "receipt_email", "action": "tokenize", "kind": "email"},
            {"path": "source.number", "action": "redact"}]})
        response = relay(client, api_keys["payment_gateway"], json={"amount": 5})
    finally:
        psp.stop()
    assert response.status_code == 201
    answer = response.get_json()
    assert answer["source"] == {"number": "[redacted]", "last4": "1111"}
    assert answer["receipt_email"].startswith("tok_email_")
    found = client.post("/v1/detokenize", json={"tokens": [answer["receipt_email"]], "purpose": "support"},
                        headers=auth(api_keys["support"])).get_json()
    assert found["results"][0]["value"] == "j***@example.com"


def test_an_echoing_upstream_never_returns_the_pan(
        client: FlaskClient, components: Components, api_keys: dict[str, str], ca: CertificateAuthority) -> None:
    echo = Upstream(ca, behaviour="pan").start()
    try:
        make_route(components, route_doc(echo, ca))
        card = tokenize(client, api_keys["checkout"], "card", CARD)
        response = relay(client, api_keys["payment_gateway"], json={"n": f"{{{{tokenvault:{card}:pan}}}}"})
    finally:
        echo.stop()
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and PAN not in text and "4111-1111-1111-1111" not in text
    # what the vault sent is redacted as such; any other PAN-like number is masked to its last four
    assert '\\"n\\":\\"[redacted]\\"' in text and "card ************1111" in text
    assert response.headers["X-Card"] == "[redacted]"


def test_pans_with_any_separator_or_a_cvv_after_them_are_masked(
        client: FlaskClient, components: Components, api_keys: dict[str, str], ca: CertificateAuthority) -> None:
    """The relay uses the vault's one PAN detector: dots, underscores, slashes, a CVV after the PAN."""
    upstream = Upstream(ca, behaviour="separated").start()
    try:
        make_route(components, route_doc(upstream, ca))
        response = relay(client, api_keys["payment_gateway"], json={})
    finally:
        upstream.stop()
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["dots"] == answer["slashes"] == "************1111"
    assert answer["underscores"] == "************5100"
    # a PAN followed by its CVV is replaced whole: neither its middle nor the CVV survives
    assert answer["with_cvv"] == answer["glued_cvv"] == "[redacted-pan]"
    assert answer["order"] == 1234567
    assert response.headers["X-Card"] == "************5100"
    text = response.get_data(as_text=True)
    assert "1111.1111" not in text and "1051_0510" not in text and "123" not in text.replace("1234567", "")


def test_card_tokens_the_detector_flags_come_back_unmasked(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority) -> None:
    """About a third of 16-digit card tokens start with 12-15 digits that pass Luhn, which the one detector
    reads as a PAN followed by more digits: a token the caller sent itself is not masked when the upstream
    echoes it, while a PAN glued to its CVV still is (the upstream's, not the caller's)."""
    from vault.clear_text import contains_pan

    make_route(components, route_doc(upstream, ca))
    flagged = next(token for token in (tokenize(client, api_keys["checkout"], "card", CARD) for _ in range(60))
                   if contains_pan(token))
    response = relay(client, api_keys["payment_gateway"], json={"token": flagged})
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and flagged in text


@pytest.mark.parametrize("behaviour", ["slow", "huge", "redirect"])
def test_hostile_upstreams(behaviour: str, client: FlaskClient, components: Components, api_keys: dict[str, str],
                           ca: CertificateAuthority) -> None:
    hostile = Upstream(ca, behaviour=behaviour).start()
    try:
        make_route(components, route_doc(hostile, ca, timeout=1.0, max_response_bytes=100_000))
        response = relay(client, api_keys["payment_gateway"], json={})
    finally:
        hostile.stop()
    if behaviour == "redirect":
        # handed back, not followed: one request reached the upstream, none the metadata address
        assert response.status_code == 302 and "Location" not in response.headers
        assert len(hostile.seen) == 1
    else:
        assert response.status_code == (504 if behaviour == "slow" else 502)
        assert response.get_json()["error"]["code"] == "upstream_failed"


def test_an_upstream_dripping_its_headers_is_cut_at_the_route_timeout(
        client: FlaskClient, components: Components, api_keys: dict[str, str], ca: CertificateAuthority) -> None:
    """Each byte of the head arrives within the per-read timeout (50 ms apart, ~13 s in all): only a
    deadline over the whole call stops it. The route's 1 s timeout answers 504, not a 502 after 13 s."""
    dripping = Upstream(ca, behaviour="drip_headers").start()
    try:
        make_route(components, route_doc(dripping, ca, timeout=1.0))
        started = time.monotonic()
        response = relay(client, api_keys["payment_gateway"], json={})
        elapsed = time.monotonic() - started
    finally:
        dripping.stop()
    assert response.status_code == 504 and response.get_json()["error"]["code"] == "upstream_failed"
    assert elapsed < 6  # bounded by the deadline (1 s) plus scheduling on a loaded machine, not the drip (13 s)


def test_mtls_upstream(client: FlaskClient, components: Components, api_keys: dict[str, str],
                       ca: CertificateAuthority) -> None:
    strict = Upstream(ca, require_client_cert=True).start()
    try:
        issued = ca.issue("tokenvault-relay", client=True)
        make_route(components, route_doc(strict, ca, name="psp", auth={
            "type": "mtls", "client_cert_pem": issued.cert_pem, "client_key_pem": issued.key_pem}))
        ok = relay(client, api_keys["payment_gateway"], json={})
        assert ok.status_code == 200 and ok.get_json()["client"] == "tokenvault-relay"
        make_route(components, route_doc(strict, ca, name="psp"))  # a new version without the client cert
        refused = relay(client, api_keys["payment_gateway"], json={})
        assert refused.status_code == 502
    finally:
        strict.stop()


def test_tls_is_verified_against_the_route_ca(client: FlaskClient, components: Components,
                                              api_keys: dict[str, str], upstream: Upstream) -> None:
    other = CertificateAuthority("some other CA")
    make_route(components, route_doc(upstream, other))
    assert relay(client, api_keys["payment_gateway"], json={}).status_code == 502
    make_route(components, {k: v for k, v in route_doc(upstream, other).items() if k != "ca_pem"})
    assert relay(client, api_keys["payment_gateway"], json={}).status_code == 502  # system CAs do not know it
    assert upstream.seen == []


def test_every_call_is_audited_without_values(client: FlaskClient, components: Components,
                                              api_keys: dict[str, str], upstream: Upstream,
                                              ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", CARD)
    assert relay(client, api_keys["payment_gateway"], json={"n": f"{{{{tokenvault:{card}:pan}}}}"}).status_code == 200
    assert relay(client, api_keys["support"], json={}).status_code == 404
    with components.engine.connect() as conn:
        rows = conn.execute(select(audit_events).order_by(audit_events.c.seq)).mappings().all()
    relayed = [r for r in rows if r["action"] == "relay"]
    assert [r["outcome"] for r in relayed] == ["allowed", "allowed", "denied"]
    sending, answered = relayed[0]["detail"], relayed[1]["detail"]
    assert "route=psp" in sending and "host=127.0.0.1" in sending and "pattern=/v1/charges" in sending
    assert "phase=sending" in sending and "tokens=1" in sending
    assert "status=200" in answered and "ms=" in answered
    assert any(r["action"] == "detokenize" and r["token"] == card for r in rows)
    assert not any(PAN in json.dumps(dict(r), default=str) for r in rows)


def test_nothing_is_sent_when_the_audit_cannot_be_written(
        client: FlaskClient, components: Components, api_keys: dict[str, str], upstream: Upstream,
        ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    make_route(components, route_doc(upstream, ca))
    card = tokenize(client, api_keys["checkout"], "card", CARD)
    from vault.errors import AuditWriteFailed

    def broken(*args: Any, **kwargs: Any) -> None:
        raise AuditWriteFailed("audit trail unavailable")

    monkeypatch.setattr(components.trail, "record", broken)
    response = relay(client, api_keys["payment_gateway"], json={"n": f"{{{{tokenvault:{card}:pan}}}}"})
    assert response.status_code == 503 and upstream.seen == []


def test_metrics_per_route(client: FlaskClient, components: Components, api_keys: dict[str, str],
                           upstream: Upstream, ca: CertificateAuthority) -> None:
    make_route(components, route_doc(upstream, ca))
    assert relay(client, api_keys["payment_gateway"], json={}).status_code == 200
    text = metrics.render()[0].decode()  # what /metrics serves to its token holder
    assert 'tokenvault_relay_calls_total{outcome="200",route="psp"}' in text
    assert 'tokenvault_relay_upstream_seconds_count{route="psp"}' in text
