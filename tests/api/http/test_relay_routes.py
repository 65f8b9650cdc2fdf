"""Relay routes over HTTP: proposed by one admin (step-up), approved by another, listed without secrets."""

from __future__ import annotations

from flask.testing import FlaskClient

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import login, make_operator
from tests.vault.relay.test_routes import SECRET, current, doc


def test_changes_need_a_second_admin_over_http(client: FlaskClient, components: Components, clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    a_session, b_session = (auth(login(client, op, op.code(clock.now))) for op in (alice, bob))
    proposed = client.post("/v1/relay-routes", json=doc(), headers={**a_session, "X-TOTP": alice.code(clock.now, 1)})
    assert proposed.status_code == 202, proposed.get_json()
    approval = proposed.get_json()["approval"]["id"]
    assert SECRET not in proposed.get_data(as_text=True)
    assert current(components) is None  # nothing serves before the approval
    own = client.post(f"/v1/approvals/{approval}/approve", headers={**a_session, "X-TOTP": alice.code(clock.now, -1)})
    assert own.status_code == 403
    approved = client.post(f"/v1/approvals/{approval}/approve",
                           headers={**b_session, "X-TOTP": bob.code(clock.now, 1)})
    assert approved.status_code == 200 and approved.get_json()["result"] == {"route": "psp", "version": 1,
                                                                              "enabled": True}
    assert current(components).config.enabled
    listed = client.get("/v1/relay-routes", headers=a_session).get_json()["routes"]
    assert [r["name"] for r in listed] == ["psp"] and SECRET not in repr(listed)
    clock.advance(60)
    disabled = client.post("/v1/relay-routes/psp/disable", headers={**b_session, "X-TOTP": bob.code(clock.now)})
    assert disabled.status_code == 202
    assert current(components).config.enabled  # still serving until approved
    second = disabled.get_json()["approval"]["id"]
    done = client.post(f"/v1/approvals/{second}/approve", headers={**a_session, "X-TOTP": alice.code(clock.now)})
    assert done.status_code == 200 and current(components).config.enabled is False


def test_refused_unsafe_proposals_and_roles_that_may_not_manage(client: FlaskClient, components: Components,
                                                               clock: Clock, api_keys: dict[str, str]) -> None:
    alice = make_operator(components, "alice", "admin")
    session = auth(login(client, alice, alice.code(clock.now)))
    bad = client.post("/v1/relay-routes", json=doc(upstream="http://api.psp.example"),
                      headers={**session, "X-TOTP": alice.code(clock.now, 1)})
    assert bad.status_code == 422 and "https" in bad.get_json()["error"]["message"]
    assert SECRET not in bad.get_data(as_text=True)
    assert client.get("/v1/relay-routes", headers=auth(api_keys["payment_gateway"])).status_code == 403
