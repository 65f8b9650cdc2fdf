"""Operators over HTTP: login with TOTP, logout, step-up in X-TOTP, dual control for disabling an operator."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import PASSWORD, Operator, enrol, login, make_operator
from vault.keys.row_mac import RowMacs
from vault.storage.schema import audit_events, clients


def test_login_answers_the_same_for_every_failure(client: FlaskClient, components: Components,
                                                  clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    code = alice.code(clock.now)
    bodies = [
        {"username": "alice", "password": "wrong password!", "totp": code},
        {"username": "alice", "password": PASSWORD, "totp": "000000"},
        {"username": "nobody", "password": PASSWORD, "totp": code},
    ]
    for body in bodies:
        response = client.post("/v1/auth/login", json=body)
        assert response.status_code == 401
        assert response.get_json()["error"] == {"code": "unauthenticated",
                                                "message": "missing or invalid credentials"}
    token = login(client, alice, code)
    replay = client.post("/v1/auth/login", json={"username": "alice", "password": PASSWORD, "totp": code})
    assert replay.status_code == 401
    assert client.get("/v1/operators", headers=auth(token)).status_code == 200


def test_login_refuses_malformed_bodies_without_echoing_them(client: FlaskClient) -> None:
    response = client.post("/v1/auth/login", json={"username": "alice", "password": "s3cret-value-here"})
    assert response.status_code == 422 and "s3cret" not in response.get_data(as_text=True)
    extra = client.post("/v1/auth/login", json={"username": "a", "password": "p", "totp": "1", "role": "admin"})
    assert extra.status_code == 422


def test_logout_ends_the_session(client: FlaskClient, components: Components, clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    token = login(client, alice, alice.code(clock.now))
    assert client.post("/v1/auth/logout", headers=auth(token)).status_code == 204
    assert client.get("/v1/operators", headers=auth(token)).status_code == 401
    assert client.post("/v1/auth/logout").status_code == 401


def test_creating_an_operator_needs_a_step_up(client: FlaskClient, components: Components, clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    session = auth(login(client, alice, alice.code(clock.now)))
    body = {"username": "bob", "role": "auditor"}
    missing = client.post("/v1/operators", json=body, headers=session)
    assert missing.status_code == 401 and missing.get_json()["error"]["code"] == "step_up_required"
    replayed = client.post("/v1/operators", json=body, headers={**session, "X-TOTP": alice.code(clock.now)})
    assert replayed.status_code == 401 and replayed.get_json()["error"]["code"] == "step_up_required"
    created = client.post("/v1/operators", json=body, headers={**session, "X-TOTP": alice.code(clock.now, 1)})
    assert created.status_code == 201
    new = created.get_json()
    assert new["role"] == "auditor" and new["active"] is False and len(new["enrolment_code_first_half"]) == 32
    assert "password" not in new and "totp_uri" not in new  # no credentials pass through the creator
    assert new["approval"]["action"] == "enable_operator" and new["approval"]["status"] == "pending"
    carol = make_operator(components, "carol", "admin")
    carol_s = auth(login(client, carol, carol.code(clock.now)))
    approved = client.post(f"/v1/approvals/{new['approval']['id']}/approve",
                           headers={**carol_s, "X-TOTP": carol.code(clock.now, 1)})
    assert approved.status_code == 200
    second = approved.get_json()["shown_once"]["enrolment_code_second_half"]
    bob = Operator(id=new["id"], username="bob", role="auditor", password="bob's own passphrase",
                   seed=enrol(components, new["enrolment_code_first_half"] + second, "bob's own passphrase"))
    assert client.get("/v1/audit/events", headers=auth(login(client, bob, bob.code(clock.now, 1)))).status_code == 200


def test_one_admin_cannot_make_a_second_identity_to_approve_alone(client: FlaskClient, components: Components,
                                                                  clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    session = auth(login(client, alice, alice.code(clock.now)))
    new = client.post("/v1/operators", json={"username": "alice2", "role": "admin"},
                      headers={**session, "X-TOTP": alice.code(clock.now, 1)}).get_json()
    own = client.post(f"/v1/approvals/{new['approval']['id']}/approve",
                      headers={**session, "X-TOTP": alice.code(clock.now, -1)})
    assert own.status_code == 403


def test_roles_without_the_operation_get_403_before_any_code(client: FlaskClient, components: Components,
                                                              clock: Clock, api_keys: dict[str, str]) -> None:
    erin = make_operator(components, "erin", "auditor")
    session = auth(login(client, erin, erin.code(clock.now)))
    body = {"username": "bob", "role": "admin"}
    assert client.post("/v1/operators", json=body, headers={**session, "X-TOTP": erin.code(clock.now, 1)}
                       ).status_code == 403
    assert client.post("/v1/operators", json=body, headers=auth(api_keys["checkout"])).status_code == 403
    bot_id, bot_key = components.clients.create("admin-bot", "support")
    with components.engine.begin() as conn:  # an admin key made before API keys were limited to machine roles
        conn.execute(update(clients).where(clients.c.id == bot_id).values(role="admin"))
        RowMacs(components.keys).backfill(conn, only_missing=False)  # such rows are sealed by `init` (#15)
    bot = client.post("/v1/operators", json=body, headers={**auth(bot_key.expose()), "X-TOTP": "123456"})
    assert bot.status_code == 401  # an API key has no second factor: a human role behind one is refused
    assert bot.get_json()["error"]["code"] == "api_key_role_not_allowed"


def test_dual_control_disables_an_operator_over_http(client: FlaskClient, components: Components,
                                                     clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    mallory = make_operator(components, "mallory", "admin")
    alice_s = auth(login(client, alice, alice.code(clock.now)))
    bob_s = auth(login(client, bob, bob.code(clock.now)))
    mallory_s = auth(login(client, mallory, mallory.code(clock.now)))

    filed = client.post(f"/v1/operators/{mallory.id}/disable", headers={**alice_s, "X-TOTP": alice.code(clock.now, 1)})
    assert filed.status_code == 202
    request = filed.get_json()
    assert request["status"] == "pending" and request["params"] == {"operator_id": mallory.id}
    assert [a["id"] for a in client.get("/v1/approvals", headers=bob_s).get_json()["approvals"]] == [request["id"]]

    approve = f"/v1/approvals/{request['id']}/approve"
    assert client.post(approve, headers=bob_s).get_json()["error"]["code"] == "step_up_required"
    own = client.post(approve, headers={**alice_s, "X-TOTP": alice.code(clock.now, -1)})
    assert own.status_code == 403
    assert client.get("/v1/operators", headers=mallory_s).status_code == 200  # still active

    done = client.post(approve, headers={**bob_s, "X-TOTP": bob.code(clock.now, 1)})
    assert done.status_code == 200
    assert done.get_json()["status"] == "executed" and done.get_json()["result"]["sessions_revoked"] == 1
    assert client.get("/v1/operators", headers=mallory_s).status_code == 401
    again = client.post(approve, headers={**bob_s, "X-TOTP": bob.code(clock.now, -1)})
    assert again.status_code == 409
    listed = client.get("/v1/operators", headers=bob_s).get_json()["operators"]
    assert [o["username"] for o in listed if o["disabled_at"]] == ["mallory"]
    assert client.get("/v1/approvals?status=all", headers=bob_s).get_json()["approvals"][0]["status"] == "executed"


def test_expired_requests_cannot_be_approved_over_http(client: FlaskClient, components: Components,
                                                       clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    target = make_operator(components, "carol", "auditor")
    alice_s = auth(login(client, alice, alice.code(clock.now)))
    request_id = client.post(f"/v1/operators/{target.id}/disable",
                             headers={**alice_s, "X-TOTP": alice.code(clock.now, 1)}).get_json()["id"]
    clock.advance(24 * 3600)
    bob_s = auth(login(client, bob, bob.code(clock.now)))
    late = client.post(f"/v1/approvals/{request_id}/approve", headers={**bob_s, "X-TOTP": bob.code(clock.now, 1)})
    assert late.status_code == 409


def test_ids_in_paths_are_checked(client: FlaskClient, components: Components, clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    session = auth(login(client, alice, alice.code(clock.now)))
    bad = client.post("/v1/operators/not-an-id/disable", headers={**session, "X-TOTP": alice.code(clock.now, 1)})
    assert bad.status_code == 422
    assert client.get("/v1/approvals?status=weird", headers=session).status_code == 422


def test_every_login_attempt_is_audited_without_secrets(client: FlaskClient, components: Components,
                                                        clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    code = alice.code(clock.now)
    client.post("/v1/auth/login", json={"username": "alice", "password": "Wrong-Password-1", "totp": code},
                headers={"User-Agent": "ops-laptop"})
    login(client, alice, code)
    with components.engine.connect() as conn:
        rows = conn.execute(select(audit_events).where(audit_events.c.action == "login")
                            .order_by(audit_events.c.seq)).mappings().all()
    assert [(r["outcome"], r["actor"], r["role"]) for r in rows] == [("denied", alice.id, "admin"),
                                                                     ("allowed", alice.id, "admin")]
    assert rows[0]["user_agent"] == "ops-laptop" and rows[0]["source"] is not None
    text = repr([dict(r) for r in rows])
    assert "Wrong-Password-1" not in text and PASSWORD not in text and code not in text


def test_anonymous_failures_cannot_lock_an_operator_out(client: FlaskClient, components: Components,
                                                        clock: Clock) -> None:
    """Issue #19: five anonymous failed logins locked the account, doubling to an hour, for ever."""
    alice = make_operator(components, "alice", "admin")
    attacker = {"REMOTE_ADDR": "203.0.113.66"}
    for _ in range(8):  # under the per-address login limit (10 a minute)
        refused = client.post("/v1/auth/login", json={"username": "alice", "password": "guess-guess-guess",
                                                      "totp": "123456"}, environ_base=attacker)
        assert refused.status_code == 401
    # Alice, from her own address, logs in at once.
    mine = client.post("/v1/auth/login", json={"username": "alice", "password": PASSWORD,
                                               "totp": alice.code(clock.now)}, environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert mine.status_code == 200
    # The attacker's source is throttled (even with the right password) until its minute passes.
    clock.advance(30)
    throttled = client.post("/v1/auth/login", json={"username": "alice", "password": PASSWORD,
                                                    "totp": alice.code(clock.now)}, environ_base=attacker)
    assert throttled.status_code == 401
    with components.engine.connect() as conn:
        details = [row[0] for row in conn.execute(select(audit_events.c.detail).where(
            audit_events.c.action == "login", audit_events.c.outcome == "denied").order_by(audit_events.c.seq))]
    assert details[-1] == "reason=throttled" and not any("locked" in d for d in details)
