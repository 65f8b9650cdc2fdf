"""Enrolment over HTTP: the attacks of issue 15 item 6, each through the Flask test client.

An admin who creates (or resets) an operator never holds a usable credential for them; codes
expire and are single-use; wrong codes are rate-limited per address and audited; an operator
cannot log in before enrolling, and changes their own password or TOTP only after a step-up.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pyotp
from flask.testing import FlaskClient
from sqlalchemy import select

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import Clock, auth, make_components
from tests.support.operators import PASSWORD, Operator, login, make_operator, seed_of
from vault.access.totp import STEP_SECONDS
from vault.audit.trail import HOST, Origin
from vault.storage.schema import approvals, audit_events

NEW_PASSWORD = "a passphrase of my own"


def step_up(session: dict[str, str], operator: Operator, clock: Clock, steps: int = 1) -> dict[str, str]:
    return {**session, "X-TOTP": operator.code(clock.now, steps)}


def code_at(seed: str, clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(seed).at(clock.now.timestamp() + steps * STEP_SECONDS)


def begin(client: FlaskClient, code: str, password: str = NEW_PASSWORD) -> Any:
    return client.post("/v1/enrolment/begin", json={"code": code, "password": password})


def enrol_over_http(client: FlaskClient, code: str, clock: Clock, password: str = NEW_PASSWORD) -> str:
    """The whole enrolment as the new operator does it; their TOTP seed."""
    started = begin(client, code, password)
    assert started.status_code == 200, started.get_json()
    seed = seed_of(started.get_json()["totp_uri"])
    done = client.post("/v1/enrolment/confirm", json={"code": code, "totp": code_at(seed, clock)})
    assert done.status_code == 200 and done.get_json()["enrolled"] is True
    return seed


def login_status(client: FlaskClient, username: str, password: str, code: str) -> int:
    return client.post("/v1/auth/login", json={"username": username, "password": password, "totp": code}).status_code


def test_the_creating_admin_cannot_log_in_as_the_new_operator(client: FlaskClient, components: Components,
                                                              clock: Clock) -> None:
    """Issue 15: POST /v1/operators used to hand the creator the new operator's password and TOTP URI."""
    alice, carol = make_operator(components, "alice", "admin"), make_operator(components, "carol", "admin")
    alice_s = auth(login(client, alice, alice.code(clock.now)))
    created = client.post("/v1/operators", json={"username": "bob", "role": "admin"},
                          headers=step_up(alice_s, alice, clock)).get_json()
    first = created["enrolment_code_first_half"]
    assert set(created) == {"id", "username", "role", "active", "enrolment_code_first_half", "approval"}
    for attempt in (first, first + first, first + "0" * 32):  # alice alone: her half, or guesses at the rest
        assert begin(client, attempt).status_code == 401
    carol_s = auth(login(client, carol, carol.code(clock.now)))
    approved = client.post(f"/v1/approvals/{created['approval']['id']}/approve",
                           headers=step_up(carol_s, carol, clock)).get_json()
    second = approved["shown_once"]["enrolment_code_second_half"]
    assert begin(client, second + second).status_code == 401  # carol alone neither
    # Shown once: the stored request (what every admin can list) keeps no half of the code.
    listed = client.get("/v1/approvals?status=all", headers=carol_s).get_json()["approvals"]
    assert second not in str(listed) and first not in str(listed)
    with components.engine.connect() as conn:
        stored = " ".join(str(v) for v in conn.execute(select(approvals)).one())
    assert second not in stored and first not in stored
    # Alice, even after the approval, has nothing to log in as bob with.
    for password in (PASSWORD, "", first):
        assert login_status(client, "bob", password or "x", "123456") == 401
    # Bob, with both halves (one from each admin), enrols and logs in.
    seed = enrol_over_http(client, first + second, clock)
    assert login_status(client, "bob", NEW_PASSWORD, code_at(seed, clock, 1)) == 200


def test_codes_are_single_use(client: FlaskClient, components: Components, clock: Clock) -> None:
    new = components.operators.create(HOST, "dora", "auditor", Origin())
    assert new.enrolment is not None
    code = new.enrolment.code.expose()
    seed = enrol_over_http(client, code, clock)
    assert begin(client, code, "an attacker's password").status_code == 401
    again = client.post("/v1/enrolment/confirm", json={"code": code, "totp": code_at(seed, clock, 1)})
    assert again.status_code == 401
    assert login_status(client, "dora", "an attacker's password", code_at(seed, clock, 1)) == 401
    assert login_status(client, "dora", NEW_PASSWORD, code_at(seed, clock, 1)) == 200


def test_codes_expire(client: FlaskClient, components: Components, clock: Clock) -> None:
    new = components.operators.create(HOST, "dora", "auditor", Origin())
    assert new.enrolment is not None
    assert new.enrolment.expires_at == clock.now + timedelta(hours=24)
    clock.advance(24 * 3600)
    expired = begin(client, new.enrolment.code.expose())
    assert expired.status_code == 401
    assert expired.get_json()["error"] == {"code": "unauthenticated", "message": "missing or invalid credentials"}


def test_the_lifetime_is_configurable(tmp_path: Path, sqlite_url: str, clock: Clock) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, clock, TOKENVAULT_ENROLMENT_SECONDS="600")
    new = parts.operators.create(HOST, "dora", "auditor", Origin())
    assert new.enrolment is not None
    clock.advance(601)
    assert begin(create_app(parts=parts).test_client(), new.enrolment.code.expose()).status_code == 401
    parts.engine.dispose()


def test_no_login_before_enrolment_is_confirmed(client: FlaskClient, components: Components, clock: Clock) -> None:
    new = components.operators.create(HOST, "dora", "auditor", Origin())
    assert new.enrolment is not None
    code = new.enrolment.code.expose()
    started = begin(client, code)
    seed = seed_of(started.get_json()["totp_uri"])
    assert login_status(client, "dora", NEW_PASSWORD, code_at(seed, clock)) == 401  # not confirmed
    wrong = client.post("/v1/enrolment/confirm", json={"code": code, "totp": "000000"})
    assert wrong.status_code == 401
    assert client.post("/v1/enrolment/begin", json={"code": code, "password": "short"}).status_code == 422
    with components.engine.connect() as conn:
        reasons = [row.detail for row in conn.execute(select(audit_events.c.detail).where(
            audit_events.c.action == "login"))]
    assert reasons == ["reason=not_enrolled"]


def test_wrong_codes_are_rate_limited_per_address_and_audited(tmp_path: Path, sqlite_url: str,
                                                              clock: Clock) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, clock, TOKENVAULT_LOGIN_RATE_LIMIT="5/minute")
    client = create_app(parts=parts).test_client()
    statuses = [begin(client, f"{n:064x}").status_code for n in range(5)]
    statuses += [client.post("/v1/enrolment/confirm", json={"code": "f" * 64, "totp": "123456"}).status_code]
    assert statuses == [401] * 5 + [429]  # begin and confirm share one counter per address
    other = client.post("/v1/enrolment/begin", json={"code": "0" * 64, "password": NEW_PASSWORD},
                        environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 401
    with parts.engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.action, audit_events.c.outcome, audit_events.c.detail)
                            .where(audit_events.c.action.in_(("enrol_begin", "enrol", "rate_limit")))).all()
    assert [(r.action, r.outcome) for r in rows].count(("enrol_begin", "denied")) == 6
    assert ("rate_limit", "denied") in [(r.action, r.outcome) for r in rows]
    assert all("0" * 32 not in (r.detail or "") for r in rows)
    parts.engine.dispose()


def test_forced_reenrolment_under_dual_control(client: FlaskClient, components: Components, clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    dave = make_operator(components, "dave", "privacy_officer")
    dave_s = auth(login(client, dave, dave.code(clock.now)))
    alice_s = auth(login(client, alice, alice.code(clock.now)))
    filed = client.post(f"/v1/operators/{dave.id}/reenrol", headers=step_up(alice_s, alice, clock))
    assert filed.status_code == 202
    first, request = filed.get_json()["enrolment_code_first_half"], filed.get_json()["approval"]
    assert client.get("/v1/subjects/s1", headers=dave_s).status_code != 401  # nothing happens before approval
    assert client.post(f"/v1/approvals/{request['id']}/approve",
                       headers=step_up(alice_s, alice, clock, -1)).status_code == 403  # not her own request
    bob_s = auth(login(client, bob, bob.code(clock.now)))
    done = client.post(f"/v1/approvals/{request['id']}/approve", headers=step_up(bob_s, bob, clock)).get_json()
    assert done["result"]["enrolment_code_second_half"] == "[shown once to the approver]"
    second = done["shown_once"]["enrolment_code_second_half"]
    assert client.get("/v1/subjects/s1", headers=dave_s).status_code == 401  # sessions revoked
    assert login_status(client, "dave", PASSWORD, dave.code(clock.now, 1)) == 401  # password and TOTP void
    assert begin(client, first + first).status_code == 401 and begin(client, second + second).status_code == 401
    seed = enrol_over_http(client, first + second, clock)
    assert login_status(client, "dave", NEW_PASSWORD, code_at(seed, clock, 1)) == 200
    assert dave.seed != seed


def test_an_operator_changes_their_password_with_a_step_up(client: FlaskClient, components: Components,
                                                           clock: Clock) -> None:
    erin = make_operator(components, "erin", "auditor")
    session = auth(login(client, erin, erin.code(clock.now)))
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert client.post("/v1/auth/password", json=body, headers=session).status_code == 401  # no step-up
    wrong = {"current_password": "not my password", "new_password": NEW_PASSWORD}
    assert client.post("/v1/auth/password", json=wrong, headers=step_up(session, erin, clock)).status_code == 401
    changed = client.post("/v1/auth/password", json=body, headers=step_up(session, erin, clock, -1))
    assert changed.status_code == 200 and changed.get_json()["sessions_revoked"] == 1
    assert client.get("/v1/audit/events", headers=session).status_code == 401
    clock.advance(90)
    assert login_status(client, "erin", PASSWORD, erin.code(clock.now)) == 401
    assert login_status(client, "erin", NEW_PASSWORD, erin.code(clock.now)) == 200
    short = {"current_password": NEW_PASSWORD, "new_password": "short"}
    renewed = Operator(erin.id, "erin", "auditor", NEW_PASSWORD, erin.seed)
    session = auth(login(client, renewed, erin.code(clock.now, 1)))
    assert client.post("/v1/auth/password", json=short, headers=step_up(session, erin, clock, -1)).status_code == 422


def test_an_operator_reenrols_their_totp_with_a_step_up(client: FlaskClient, components: Components,
                                                        clock: Clock, api_keys: dict[str, str]) -> None:
    erin = make_operator(components, "erin", "auditor")
    session = auth(login(client, erin, erin.code(clock.now)))
    assert client.post("/v1/auth/reenrol", json={"password": PASSWORD}, headers=session).status_code == 401
    assert client.post("/v1/auth/reenrol", json={"password": PASSWORD},
                       headers={**auth(api_keys["support"]), "X-TOTP": "123456"}).status_code == 403
    issued = client.post("/v1/auth/reenrol", json={"password": PASSWORD}, headers=step_up(session, erin, clock))
    assert issued.status_code == 200
    code = issued.get_json()["enrolment_code"]
    assert client.get("/v1/audit/events", headers=session).status_code == 401
    seed = enrol_over_http(client, code, clock, PASSWORD)
    assert seed != erin.seed
    assert login_status(client, "erin", PASSWORD, code_at(seed, clock, 1)) == 200
    with components.engine.connect() as conn:
        actions = [row.action for row in conn.execute(select(audit_events.c.action).where(
            audit_events.c.actor == erin.id, audit_events.c.outcome == "allowed").order_by(audit_events.c.seq))]
    assert actions[-4:] == ["reenrol_self", "enrol_begin", "enrol", "login"]
