"""Issue #15's insider attacks, each over HTTP (Flask test client), on SQLite and PostgreSQL.

The insider reads and writes every table but holds no KEK. Each attack must fail closed:
no wider access than before, a stable error code, and an `integrity` audit event (the alert).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import login, make_operator
from vault.audit.trail import HOST, Origin
from vault.errors import IntegrityFailure
from vault.storage.schema import approvals, audit_events, clients, operator_sessions, operators, tokens

VICTIM_PAN = "4000002500003155"
INSIDER_PAN = "4000000000000077"


def _card(pan: str) -> dict[str, Any]:
    return {"kind": "card", "value": {"pan": pan, "exp_month": 7, "exp_year": 2099}, "deterministic": True}


def _integrity_events(parts: Components) -> list[Any]:
    with parts.engine.connect() as conn:
        return list(conn.execute(select(audit_events).where(audit_events.c.action == "integrity")).mappings())


def test_lookup_moved_to_a_victims_row_does_not_return_the_victims_token(
        client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    """Issue: tokenizing the insider's card returned the victim's token, which the gateway detokenized."""
    victim = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"])).get_json()
    mine = client.post("/v1/tokens", json=_card(INSIDER_PAN), headers=auth(api_keys["checkout"])).get_json()
    with components.engine.begin() as conn:
        my_lookup = conn.execute(select(tokens.c.lookup).where(tokens.c.token == mine["token"])).scalar_one()
        conn.execute(update(tokens).where(tokens.c.token == mine["token"]).values(lookup=None))
        conn.execute(update(tokens).where(tokens.c.token == victim["token"]).values(lookup=my_lookup))

    again = client.post("/v1/tokens", json=_card(INSIDER_PAN), headers=auth(api_keys["checkout"]))
    assert again.status_code == 403, again.get_json()
    assert again.get_json()["error"]["code"] == "integrity_failure"
    assert victim["token"] not in again.get_data(as_text=True)
    assert VICTIM_PAN not in again.get_data(as_text=True) and INSIDER_PAN not in again.get_data(as_text=True)
    events = _integrity_events(components)
    assert len(events) == 1 and events[0]["error_code"] == "integrity_failure"

    batch = client.post("/v1/tokens/batch", json={"items": [_card(INSIDER_PAN)]},
                        headers=auth(api_keys["checkout"])).get_json()
    assert batch["results"][0]["error"]["code"] == "integrity_failure"
    # The victim's own deterministic tokenization still finds their token (the moved lookup is not theirs).
    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.lookup == my_lookup)).scalar_one() == victim["token"]


def test_a_lookup_kept_in_place_still_answers(client: FlaskClient, api_keys: dict[str, str]) -> None:
    first = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"])).get_json()
    second = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"]))
    assert second.status_code in (200, 201) and second.get_json()["token"] == first["token"]


# -- API clients ------------------------------------------------------------------------------------


def _edit(parts: Components, table: Any, key: str, **values: Any) -> None:
    with parts.engine.begin() as conn:
        assert conn.execute(update(table).where(table.c.id == key).values(**values)).rowcount == 1


def _client_id(parts: Components, name: str) -> str:
    with parts.engine.connect() as conn:
        return str(conn.execute(select(clients.c.id).where(clients.c.name == name)).scalar_one())


def _card_token(client: FlaskClient, api_keys: dict[str, str]) -> str:
    body = {"kind": "card", "value": {"pan": VICTIM_PAN, "exp_month": 7, "exp_year": 2099}}
    token: str = client.post("/v1/tokens", json=body, headers=auth(api_keys["checkout"])).get_json()["token"]
    return token


def _refused(response: Any, parts: Components, before: int) -> None:
    assert response.status_code == 403, response.get_json()
    assert response.get_json()["error"]["code"] == "integrity_failure"
    assert VICTIM_PAN not in response.get_data(as_text=True)
    assert len(_integrity_events(parts)) == before + 1


def test_client_role_raised_from_shipping_to_gateway_is_refused(
        client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    token = _card_token(client, api_keys)
    _edit(components, clients, _client_id(components, "test-shipping"), role="payment_gateway")
    response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                           headers=auth(api_keys["shipping"]))
    _refused(response, components, 0)


def test_revoked_client_revived_by_clearing_revoked_at_is_refused(
        client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    token = _card_token(client, api_keys)
    gateway = _client_id(components, "test-payment_gateway")
    components.clients.revoke(gateway)
    _edit(components, clients, gateway, revoked_at=None)
    response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    _refused(response, components, 0)


def test_rotation_grace_extended_by_the_insider_is_refused(
        client: FlaskClient, components: Components, api_keys: dict[str, str], clock: Clock) -> None:
    gateway = _client_id(components, "test-payment_gateway")
    components.clients.rotate(gateway, 0)
    _edit(components, clients, gateway, previous_key_expires_at=clock() + timedelta(days=365))
    response = client.get("/v1/tokens/" + _card_token(client, api_keys), headers=auth(api_keys["payment_gateway"]))
    _refused(response, components, 0)


def test_a_clients_key_hash_copied_onto_a_stronger_client_is_refused(
        client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    """Copy: the shipping key's hash onto the gateway's row (the shipping row moved aside)."""
    shipping, gateway = _client_id(components, "test-shipping"), _client_id(components, "test-payment_gateway")
    with components.engine.begin() as conn:
        ship_hash = conn.execute(select(clients.c.key_hash).where(clients.c.id == shipping)).scalar_one()
        conn.execute(update(clients).where(clients.c.id == shipping).values(key_hash=b"\x00" * 32))
        conn.execute(update(clients).where(clients.c.id == gateway).values(key_hash=ship_hash))
    response = client.post("/v1/detokenize", json={"tokens": [_card_token(client, api_keys)], "purpose": "payment"},
                           headers=auth(api_keys["shipping"]))
    _refused(response, components, 0)


def test_an_untouched_client_still_works(client: FlaskClient, api_keys: dict[str, str]) -> None:
    token = _card_token(client, api_keys)
    response = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                           headers=auth(api_keys["payment_gateway"]))
    assert response.status_code == 200 and response.get_json()["results"][0]["value"]["pan"] == VICTIM_PAN


# -- operators and sessions ---------------------------------------------------------------------------


def test_session_pointed_at_a_privacy_officer_is_refused(
        client: FlaskClient, components: Components, clock: Clock) -> None:
    """Issue: an auditor's session row pointed at a privacy officer exported a customer's plaintext."""
    auditor = make_operator(components, "aud.insider", "auditor")
    officer = make_operator(components, "po.victim", "privacy_officer")
    session = login(client, auditor, auditor.code(clock()))
    with components.engine.begin() as conn:
        conn.execute(update(operator_sessions).where(operator_sessions.c.operator_id == auditor.id)
                     .values(operator_id=officer.id))
    response = client.get("/v1/subjects/cust-1/export", headers=auth(session))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "integrity_failure"
    assert len(_integrity_events(components)) == 1


def test_session_expiry_extended_is_refused(client: FlaskClient, components: Components, clock: Clock) -> None:
    auditor = make_operator(components, "aud.late", "auditor")
    session = login(client, auditor, auditor.code(clock()))
    clock.advance(3600)
    with components.engine.begin() as conn:
        conn.execute(update(operator_sessions).where(operator_sessions.c.operator_id == auditor.id)
                     .values(expires_at=clock() + timedelta(hours=8)))
    response = client.get("/v1/audit/events", headers=auth(session))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "integrity_failure"


@pytest.mark.parametrize("edit", ["role", "password_hash", "lockout", "enabled"])
def test_operator_row_edits_are_refused_at_login(
        edit: str, client: FlaskClient, components: Components, clock: Clock) -> None:
    insider = make_operator(components, "aud.edit", "auditor")
    admin = make_operator(components, "adm.victim", "admin", password="another long passphrase here")
    with components.engine.connect() as conn:
        admin_hash = conn.execute(select(operators.c.password_hash).where(operators.c.id == admin.id)).scalar_one()
    if edit == "lockout":
        for _ in range(6):  # the right password with wrong codes: what locks an account (issue #19)
            client.post("/v1/auth/login", json={"username": insider.username, "password": insider.password,
                                                "totp": "000000"})
    values = {"role": {"role": "admin"},
              "password_hash": {"password_hash": admin_hash},  # the insider's row, the victim's known password
              "lockout": {"failed_attempts": 0, "locked_until": None},
              "enabled": {"disabled_at": None}}[edit]
    if edit == "enabled":  # disabled the legitimate way (as an approved request runs it), then re-enabled by hand
        with components.engine.begin() as conn:
            components.operators.run_disable(conn, HOST, {"operator_id": insider.id}, Origin())
    _edit(components, operators, insider.id, **values)
    password = admin.password if edit == "password_hash" else insider.password
    response = client.post("/v1/auth/login", json={"username": insider.username, "password": password,
                                                   "totp": insider.code(clock())})
    assert response.status_code == 403, response.get_json()
    assert response.get_json()["error"]["code"] == "integrity_failure"
    assert len(_integrity_events(components)) == 1


def test_an_untouched_operator_still_logs_in(client: FlaskClient, components: Components, clock: Clock) -> None:
    auditor = make_operator(components, "aud.ok", "auditor")
    session = login(client, auditor, auditor.code(clock()))
    assert client.get("/v1/audit/events", headers=auth(session)).status_code == 200


# -- dual control ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["requester", "params", "expiry", "status"])
def test_an_edited_approval_request_never_runs(edit: str, components: Components, clock: Clock) -> None:
    """Mallory asks to disable alice; the insider edits the request so that mallory can approve it herself,
    or so that it targets bob, or outlives its expiry, or is approved already but runs again."""
    from tests.vault.access.test_approvals import request_disable, step_up

    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    mallory = make_operator(components, "mallory", "admin")
    request_id = request_disable(components, clock, mallory, alice)
    values = {"requester": {"requested_by": bob.id},
              "params": {"params": json.dumps({"operator_id": bob.id})},
              "expiry": {"expires_at": clock() + timedelta(days=30)},
              "status": {"status": "pending", "approved_by": None, "approved_at": None, "result": None}}[edit]
    if edit == "expiry":
        clock.advance(2 * 24 * 3600)
    expected_disabled = set()
    if edit == "status":  # approved and run once, legitimately; the insider puts it back to pending
        components.approvals.approve(step_up(components, clock, bob, 1), request_id, Origin())
        expected_disabled = {alice.id}
        bob = make_operator(components, "carol", "admin")
    approver = bob if edit != "requester" else mallory
    with components.engine.begin() as conn:
        conn.execute(update(approvals).where(approvals.c.id == request_id).values(**values))
    with pytest.raises(IntegrityFailure):
        components.approvals.approve(step_up(components, clock, approver, 1), request_id, Origin())
    with components.engine.connect() as conn:
        disabled = set(conn.execute(select(operators.c.id).where(operators.c.disabled_at.is_not(None))).scalars())
    assert disabled == expected_disabled
    assert len(_integrity_events(components)) == 1


def test_a_hold_released_in_the_database_still_protects_from_the_purge(components: Components,
                                                                       clock: Clock) -> None:
    from vault.audit.trail import Actor
    from vault.storage.schema import holds
    from vault.tokens.records import TokenRequest

    checkout, officer = Actor(id="cli_checkout", role="checkout"), Actor(id="op_po", role="privacy_officer")
    card = {"pan": VICTIM_PAN, "exp_month": 7, "exp_year": 2099}
    token = components.tokens.tokenize(checkout, [TokenRequest(kind="card", value=card, subject_id="cust-h")],
                                       Origin())[0]
    clock.advance(400 * 24 * 3600)  # unused for longer than the card rule's 395 days
    hold = components.privacy.add_hold(officer, "cust-h", "court order", clock() + timedelta(days=30), Origin())
    _edit(components, holds, hold["id"], released_at=clock())
    components.retention.purge(Actor(id="host", role="host"))
    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == token.token)).scalar() == token.token


def test_a_disclosure_marked_approved_in_the_database_is_not_collected(components: Components,
                                                                        clock: Clock) -> None:
    """One officer disclosing alone: the insider approves their own request in the database."""
    from vault.audit.trail import Actor
    from vault.storage.schema import disclosures

    officer = Actor(id="op_po_alone", role="privacy_officer")
    made = components.disclosures.request(officer, subject_id="cust-d", token_list=[], case_reference="case-9",
                                          authority="court", justification="order", origin=Origin())
    _edit(components, disclosures, made["id"], status="approved", approved_by="op_po_other", approved_at=clock())
    with pytest.raises(IntegrityFailure):
        components.disclosures.collect(officer, made["id"], Origin())
    assert len(_integrity_events(components)) == 1
