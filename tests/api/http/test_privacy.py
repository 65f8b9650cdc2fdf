"""Customers' rights end to end over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import bearer, login, make_operator
from vault.storage.schema import data_keys, tokens

PAN = "5555555555554444"
CARD = {"pan": PAN, "exp_month": 7, "exp_year": 2099, "holder": "Erin Erasable"}
EMAIL = "erin.erasable@example.net"
HOME = {"name": "Erin Erasable", "line1": "9 Forgotten Road", "city": "Oslo", "country": "NO", "use": "shipping"}


class Officer:
    """A privacy officer logged in with password + TOTP; `stepped()` adds a fresh X-TOTP code."""

    def __init__(self, client: FlaskClient, components: Components, clock: Clock, username: str) -> None:
        self.operator = make_operator(components, username, "privacy_officer")
        self.clock = clock
        self.session = login(client, self.operator, self.operator.code(clock.now))

    def plain(self) -> dict[str, str]:
        return auth(self.session)

    def stepped(self) -> dict[str, str]:
        self.clock.advance(30)  # the next TOTP step: a code is accepted once only
        return {**auth(self.session), "X-TOTP": self.operator.code(self.clock.now)}


@pytest.fixture
def officers(client: FlaskClient, components: Components, clock: Clock) -> tuple[Officer, Officer]:
    return Officer(client, components, clock, "po-one"), Officer(client, components, clock, "po-two")


@pytest.fixture
def keys(components: Components, api_keys: dict[str, str]) -> dict[str, str]:
    # Privacy officers are people: operator sessions (password + TOTP), never API keys.
    extra = {role: bearer(components, role) for role in ("privacy_officer", "marketing")}
    extra["officer2"] = bearer(components, "privacy_officer", "t-officer-2")
    return {**api_keys, **extra}


def tokenize(client: FlaskClient, keys: dict[str, str], kind: str, value: Any, **extra: Any) -> str:
    answer = client.post("/v1/tokens", json={"kind": kind, "value": value, "subject_id": "cust-1", **extra},
                         headers=auth(keys["checkout"]))
    assert answer.status_code == 201, answer.get_json()
    token: str = answer.get_json()["token"]
    return token


def detok(client: FlaskClient, key: str, token: str, purpose: str) -> dict[str, Any]:
    result: dict[str, Any] = client.post("/v1/detokenize", json={"tokens": [token], "purpose": purpose},
                                         headers=auth(key)).get_json()["results"][0]
    return result


@pytest.fixture
def customer(client: FlaskClient, keys: dict[str, str]) -> dict[str, str]:
    found = {
        "card": tokenize(client, keys, "card", CARD, reference="order-77"),
        "email": tokenize(client, keys, "email", EMAIL),
        "address": tokenize(client, keys, "address", HOME),
        "cvv": tokenize(client, keys, "cvv", "321"),
    }
    detok(client, keys["payment_gateway"], found["card"], "payment")
    detok(client, keys["shipping"], found["address"], "fulfillment")
    return found


def test_export_has_values_purposes_retention_and_disclosure_history(
        client: FlaskClient, keys: dict[str, str], customer: dict[str, str]) -> None:
    answer = client.get("/v1/subjects/cust-1/export", headers=auth(keys["privacy_officer"]))
    assert answer.status_code == 200
    document = answer.get_json()
    items = {item["kind"]: item for item in document["data"]}
    assert set(items) == {"card", "email", "address"}  # never the CVV
    assert items["card"]["value"]["pan"] == PAN and items["email"]["value"] == EMAIL
    assert "payment" in items["card"]["purposes"]
    assert items["card"]["retention"]["kept_after_erasure"] == ["brand", "last4", "reference"]
    readers = {(r["role"], r["purpose"], r["token"]) for r in document["disclosure_history"]}
    assert ("payment_gateway", "payment", customer["card"]) in readers
    assert ("shipping", "fulfillment", customer["address"]) in readers
    requests = client.get("/v1/privacy/requests", headers=auth(keys["privacy_officer"])).get_json()
    assert requests == {"requests": []}  # the export was completed at once, not left open
    assert client.get("/v1/subjects/cust-1/export", headers=auth(keys["support"])).status_code == 403


def test_view_subject(client: FlaskClient, keys: dict[str, str], customer: dict[str, str]) -> None:
    view = client.get("/v1/subjects/cust-1", headers=auth(keys["privacy_officer"])).get_json()
    assert {k: len(v) for k, v in view["tokens"].items()} == {"card": 1, "email": 1, "address": 1, "cvv": 1}
    assert PAN not in str(view)
    assert client.get("/v1/subjects/nobody", headers=auth(keys["privacy_officer"])).status_code == 404


def test_correction_keeps_token_and_lists_recipients(client: FlaskClient, components: Components,
                                                     keys: dict[str, str], customer: dict[str, str],
                                                     officers: tuple[Officer, Officer]) -> None:
    token = customer["address"]
    with components.engine.connect() as conn:
        old_key, old_blob = conn.execute(select(tokens.c.data_key_id, tokens.c.ciphertext)
                                         .where(tokens.c.token == token)).one()
    moved = {**HOME, "line1": "10 New Street"}
    # Every correction needs a step-up: an API key (no TOTP) or a session without a fresh code cannot.
    assert client.patch(f"/v1/tokens/{token}", json={"value": moved},
                        headers=auth(keys["privacy_officer"])).status_code in (401, 403)
    assert client.patch(f"/v1/tokens/{token}", json={"value": moved}, headers=officers[0].plain()).status_code == 401
    answer = client.patch(f"/v1/tokens/{token}", json={"value": moved}, headers=officers[0].stepped())
    assert answer.status_code == 200
    assert answer.get_json()["token"] == token
    assert answer.get_json()["recipients_to_notify"] == [f"shipping:{_client_id(components, 'test-shipping')}"]
    assert detok(client, keys["shipping"], token, "fulfillment")["value"]["line1"] == "10 New Street"
    with components.engine.connect() as conn:
        new_key, new_blob = conn.execute(select(tokens.c.data_key_id, tokens.c.ciphertext)
                                         .where(tokens.c.token == token)).one()
        assert new_key != old_key and new_blob != old_blob
    assert client.patch(f"/v1/tokens/{token}", json={"value": moved},
                        headers=auth(keys["checkout"])).status_code == 403


@pytest.mark.parametrize("pan", ["5105105105105100", "5500000000004444", "5105105105184444", "4111111111134444",
                                 "4222222204444"])  # same last four as PAN, and a 13-digit one
def test_a_card_correction_never_changes_the_card_number(client: FlaskClient, components: Components,
                                                         keys: dict[str, str], customer: dict[str, str],
                                                         officers: tuple[Officer, Officer], pan: str) -> None:
    """Issue #19: a different PAN with the same last four (or another length) swapped the card behind a token."""
    token = customer["card"]
    for value in ({**CARD, "pan": pan}, {**CARD, "pan": pan, "holder": "Someone Else"}):
        bad = client.patch(f"/v1/tokens/{token}", json={"value": value}, headers=officers[0].stepped())
        assert bad.status_code == 422, pan
        assert pan not in bad.get_data(as_text=True) and "new token" in bad.get_json()["error"]["message"]
    assert detok(client, keys["payment_gateway"], token, "payment")["value"]["pan"] == PAN
    fixed = client.patch(f"/v1/tokens/{token}", json={"value": {**CARD, "exp_year": 2098, "holder": "Erin Kept"}},
                         headers=officers[0].stepped())
    assert fixed.status_code == 200
    value = detok(client, keys["payment_gateway"], token, "payment")["value"]
    assert (value["pan"], value["exp_year"], value["holder"]) == (PAN, 2098, "Erin Kept")


def _client_id(components: Components, name: str) -> str:
    return next(str(c["id"]) for c in components.clients.list() if c["name"] == name)


def test_erasure_crypto_shreds_and_keeps_only_tax_records(client: FlaskClient, components: Components,
                                                           keys: dict[str, str], customer: dict[str, str],
                                                           officers: tuple[Officer, Officer]) -> None:
    assert client.delete("/v1/subjects/cust-1", headers=officers[0].plain()).status_code == 401  # no step-up
    assert client.delete("/v1/subjects/cust-1", headers=auth(keys["privacy_officer"])).status_code in (401, 403)
    answer = client.delete("/v1/subjects/cust-1", headers=officers[0].stepped())
    assert answer.status_code == 200
    receipt = answer.get_json()
    assert receipt["erased"] == {"card": 1, "email": 1, "address": 1, "cvv": 1}
    assert receipt["retained"] == [{"token": customer["card"], "kind": "card",
                                    "kept": {"brand": "mastercard", "last4": "4444", "reference": "order-77"},
                                    "why": receipt["retained"][0]["why"], "until": receipt["retained"][0]["until"]}]
    assert len(receipt["signature"]["hmac_sha256"]) == 64 and receipt["data_keys_destroyed"] == 2
    for token in customer.values():
        for key, purpose in ((keys["payment_gateway"], "payment"), (keys["shipping"], "fulfillment"),
                             (keys["privacy_officer"], "legal")):
            assert detok(client, key, token, purpose)["error"]["code"] == "not_found"
        assert client.get(f"/v1/tokens/{token}", headers=auth(keys["checkout"])).status_code == 404
    with components.engine.connect() as conn:
        assert conn.execute(select(data_keys).where(data_keys.c.subject_id == "cust-1")).first() is None
        dump = " ".join(repr(tuple(row)) for table in ("tokens", "data_keys", "audit_events", "retained_records",
                                                       "subjects", "privacy_requests")
                        for row in conn.execute(text(f"SELECT * FROM {table}")))
    for needle in (PAN, EMAIL, "Forgotten Road", "Erin Erasable"):
        assert needle not in dump
    url = str(components.engine.url)
    if url.startswith("sqlite"):
        components.engine.dispose()
        raw = Path(url.removeprefix("sqlite:///")).read_bytes()
        for needle in (PAN, EMAIL, "Forgotten Road"):
            assert needle.encode() not in raw


def test_held_subject_survives_deletion_and_purge(client: FlaskClient, components: Components,
                                                  keys: dict[str, str], customer: dict[str, str],
                                                  clock: Clock, officers: tuple[Officer, Officer]) -> None:
    officer = auth(keys["privacy_officer"])
    hold = client.post("/v1/subjects/cust-1/holds", json={"reason": "case 2026-17", "until": "2099-01-01T00:00:00Z"},
                       headers=officer)
    assert hold.status_code == 201
    refused = client.delete("/v1/subjects/cust-1", headers=officers[0].stepped())
    assert refused.status_code == 409
    clock.advance(400 * 86400)  # past the 13-month card rule
    from vault.audit.trail import Actor

    counts = components.retention.purge(Actor(id="cron", role="system"))
    assert counts["unused_card"] == 0
    assert detok(client, keys["payment_gateway"], customer["card"], "payment")["value"]["pan"] == PAN
    for one in officers:  # their sessions expired during those 400 days
        one.session = login(client, one.operator, one.operator.code(clock.now))
    filed = client.delete(f"/v1/subjects/cust-1/holds/{hold.get_json()['id']}", headers=officers[0].stepped())
    assert filed.status_code == 202  # a second officer must approve the release
    approval = filed.get_json()["approval"]["id"]
    assert client.post(f"/v1/approvals/{approval}/approve", headers=officers[1].stepped()).status_code == 200
    clock.advance(400 * 86400)
    assert components.retention.purge(Actor(id="cron", role="system"))["unused_card"] == 1


def test_marketing_refused_after_opt_out_and_for_minors(client: FlaskClient, keys: dict[str, str],
                                                       customer: dict[str, str],
                                                       officers: tuple[Officer, Officer]) -> None:
    email = customer["email"]
    assert detok(client, keys["marketing"], email, "marketing")["value"] == EMAIL
    assert detok(client, keys["marketing"], customer["card"], "marketing")["error"]["code"] == "not_found"
    opt_out = client.put("/v1/subjects/cust-1/consents", json={"marketing": False, "source": "web-form"},
                         headers=auth(keys["checkout"]))
    assert opt_out.status_code == 200 and opt_out.get_json()["current"] == {"marketing": False}
    assert detok(client, keys["marketing"], email, "marketing")["error"]["code"] == "not_found"
    client.put("/v1/subjects/cust-1/consents", json={"marketing": True}, headers=auth(keys["checkout"]))
    assert detok(client, keys["marketing"], email, "marketing")["value"] == EMAIL
    other = client.post("/v1/tokens", json={"kind": "email", "value": "kid@example.net", "subject_id": "kid-1"},
                        headers=auth(keys["checkout"])).get_json()["token"]
    minor = client.post("/v1/subjects/kid-1/minor", headers=officers[0].stepped())
    assert minor.status_code == 200 and minor.get_json()["erased"] == {"email": 1}
    assert detok(client, keys["marketing"], other, "marketing")["error"]["code"] == "not_found"
    again = client.put("/v1/subjects/kid-1/consents", json={"marketing": True}, headers=auth(keys["checkout"]))
    assert again.status_code == 403


def test_restriction_allows_only_legal_purpose(client: FlaskClient, keys: dict[str, str],
                                               customer: dict[str, str]) -> None:
    officer = auth(keys["privacy_officer"])
    assert client.put("/v1/subjects/cust-1/restriction", json={"restricted": True}, headers=officer).status_code == 204
    assert detok(client, keys["payment_gateway"], customer["card"], "payment")["error"]["code"] == "not_found"
    assert detok(client, keys["privacy_officer"], customer["card"], "legal")["value"]["pan"] == PAN
    client.put("/v1/subjects/cust-1/restriction", json={"restricted": False}, headers=officer)
    assert detok(client, keys["payment_gateway"], customer["card"], "payment")["value"]["pan"] == PAN


def test_disclosure_needs_two_distinct_officers(client: FlaskClient, keys: dict[str, str],
                                                customer: dict[str, str], officers: tuple[Officer, Officer]) -> None:
    one, two = officers
    first, second = one.plain(), two.plain()
    body = {"subject_id": "cust-1", "case_reference": "CR-9", "authority": "Court of Oslo",
            "justification": "court order 9/2026"}
    made = client.post("/v1/disclosures", json=body, headers=one.stepped())
    assert made.status_code == 202
    disclosure = made.get_json()["id"]
    assert client.post(f"/v1/disclosures/{disclosure}/collect", headers=one.stepped()).status_code == 404
    assert client.post(f"/v1/disclosures/{disclosure}/approve", headers=one.stepped()).status_code == 403  # own
    assert client.post(f"/v1/disclosures/{disclosure}/approve", headers=second).status_code == 401  # no step-up
    assert client.post(f"/v1/disclosures/{disclosure}/approve", headers=two.stepped()).status_code == 200
    assert client.post(f"/v1/disclosures/{disclosure}/collect", headers=two.stepped()).status_code == 404  # not theirs
    # Collecting a whole subject's plaintext needs a step-up too (issue #19).
    assert client.post(f"/v1/disclosures/{disclosure}/collect", headers=first).status_code == 401
    values = client.post(f"/v1/disclosures/{disclosure}/collect", headers=one.stepped()).get_json()["values"]
    assert {v["kind"] for v in values} == {"card", "email", "address"}
    assert client.post(f"/v1/disclosures/{disclosure}/collect", headers=one.stepped()).status_code == 404  # once
    export = client.get("/v1/subjects/cust-1/export", headers=first).get_json()
    assert export["legal_disclosures"][0]["case_reference"] == "CR-9"
    assert export["legal_disclosures"][0]["status"] == "delivered"
    assert client.post("/v1/disclosures", json=body, headers=auth(keys["support"])).status_code == 403
    assert keys["officer2"]


def test_requests_register(client: FlaskClient, components: Components, keys: dict[str, str],
                           clock: Clock) -> None:
    officer = auth(keys["privacy_officer"])
    made = client.post("/v1/subjects/cust-9/requests", json={"right": "erasure"}, headers=officer).get_json()
    assert made["status"] == "open"
    assert client.get("/v1/privacy/requests?due_within_days=7", headers=officer).get_json() == {"requests": []}
    clock.advance(25 * 86400)
    officer = auth(bearer(components, "privacy_officer", "po-later"))  # a session lasts 15 minutes
    due = client.get("/v1/privacy/requests?due_within_days=7", headers=officer).get_json()["requests"]
    assert [r["id"] for r in due] == [made["id"]]
    assert client.post(f"/v1/privacy/requests/{made['id']}/close", json={"outcome": "erased"},
                       headers=officer).status_code == 204
    assert client.get("/v1/privacy/requests", headers=officer).get_json() == {"requests": []}
    assert client.get("/v1/privacy/requests", headers=auth(keys["checkout"])).status_code == 403


def _recipient_key(fingerprint_holds_luhn_run: bool) -> str:
    """A recipient's PEM whose SHA-256 fingerprint does (or does not) hold a run the PAN detector flags."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from vault.clear_text import contains_pan
    from vault.privacy.transfer import recipient_fingerprint

    while True:  # about one key in twenty has such a fingerprint
        pem = X25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        if contains_pan(recipient_fingerprint(pem)) == fingerprint_holds_luhn_run:
            return pem.decode()


@pytest.mark.parametrize("luhn_fingerprint", [False, True], ids=["plain-fingerprint", "luhn-run-in-fingerprint"])
def test_business_transfer_needs_a_second_officer(client: FlaskClient, officers: tuple[Officer, Officer],
                                                  customer: dict[str, str], luhn_fingerprint: bool) -> None:
    one, two = officers
    public = _recipient_key(luhn_fingerprint)  # the vault's own digest is never refused as a card number
    body = {"subjects": ["cust-1"], "recipient_public_key": public}
    assert client.post("/v1/transfers", json=body, headers=one.plain()).status_code == 401  # no step-up
    made = client.post("/v1/transfers", json=body, headers=one.stepped())
    assert made.status_code == 202
    approval = made.get_json()["approval"]
    assert approval["action"] == "transfer_export" and approval["status"] == "pending"
    assert client.post(f"/v1/approvals/{approval['id']}/approve", headers=one.stepped()).status_code == 403
    done = client.post(f"/v1/approvals/{approval['id']}/approve", headers=two.stepped())
    assert done.status_code == 200 and done.get_json()["status"] == "executed"
    assert customer["card"]
