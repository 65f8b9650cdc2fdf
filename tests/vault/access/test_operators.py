"""Operators: accounts, login with password + TOTP, lockout, sessions, step-up (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import threading

import pytest
from sqlalchemy import select

from api.wiring import Components
from tests.conftest import Clock
from tests.support.operators import PASSWORD, Operator, make_operator
from vault.audit.facts import seed_fingerprint
from vault.audit.log import EventQuery
from vault.audit.trail import HOST, Actor, Origin
from vault.errors import Conflict, Forbidden, StepUpRequired, Unauthenticated, ValidationFailed, VaultError
from vault.secret import Secret
from vault.storage.schema import audit_events, operator_sessions, operators, privacy_requests
from vault.tokens.records import TokenRecord, TokenRequest

ORIGIN = Origin(request_id="req-1", source="203.0.113.7", user_agent="pytest")


def login(components: Components, operator: Operator, code: str, password: str | None = None) -> str:
    done = components.operators.login(operator.username, Secret(password or operator.password), Secret(code), ORIGIN)
    return done.session.token.expose()


def events(components: Components, action: str) -> list[tuple[str, str, str | None]]:
    with components.engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.outcome, audit_events.c.actor, audit_events.c.detail)
                            .where(audit_events.c.action == action).order_by(audit_events.c.seq)).all()
    return [(row.outcome, row.actor, row.detail) for row in rows]


@pytest.fixture
def alice(components: Components) -> Operator:
    return make_operator(components, "alice", "admin")


def test_create_stores_an_argon2id_hash_and_a_sealed_seed(components: Components, alice: Operator) -> None:
    with components.engine.connect() as conn:
        row = conn.execute(select(operators).where(operators.c.id == alice.id)).mappings().one()
    assert row["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in row["password_hash"]
    assert alice.seed.encode() not in bytes(row["totp_sealed"])
    assert row["role"] == "admin" and row["failed_attempts"] == 0
    [(outcome, actor, detail)] = events(components, "create_operator")  # the seed enrolment replaced since
    assert (outcome, actor) == ("allowed", "host")
    assert re.fullmatch(f"operator={alice.id} role=admin active=True seed=[0-9a-f]{{16}}", detail)
    [(_, _, enrolled)] = events(components, "enrol_begin")  # names the seed alice holds now
    assert enrolled == f"operator={alice.id} seed={seed_fingerprint(row['totp_key_id'])}"


def test_create_on_the_host_gives_an_enrolment_code_and_no_credentials(components: Components) -> None:
    new = components.operators.create(HOST, "bob", "auditor", ORIGIN)
    assert new.enrolment is not None and len(new.enrolment.code.expose()) == 64 and not new.enrolment.half
    assert "**redacted**" in repr(new.enrolment.code)
    assert not hasattr(new, "password") and not hasattr(new, "totp_uri")
    with components.engine.connect() as conn:
        row = conn.execute(select(operators).where(operators.c.id == new.id)).mappings().one()
    assert row["password_hash"] == "!" and len(bytes(row["enrolment_hash"])) == 32
    assert new.enrolment.code.expose().encode() not in bytes(row["enrolment_hash"])


@pytest.mark.parametrize(("username", "role", "field"), [
    ("carol", "checkout", "role"),      # machine roles are for API clients
    ("carol", "nobody", "role"),
    ("Carol!", "admin", "username"),
])
def test_create_refuses_bad_input(components: Components, username: str, role: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        components.operators.create(HOST, username, role, ORIGIN)
    assert raised.value.field == field


def test_usernames_are_unique(components: Components, alice: Operator) -> None:
    with pytest.raises(Conflict):
        make_operator(components, "alice", "auditor")


def test_only_operator_managers_create_operators(components: Components, alice: Operator) -> None:
    auditor = Actor(id="op_x", role="auditor")
    with pytest.raises(Forbidden):
        components.operators.create(auditor, "dave", "admin", ORIGIN)
    admin = Actor(id=alice.id, role="admin", name="alice")
    dave = components.operators.create(admin, "dave", "admin", ORIGIN)
    assert dave.role == "admin" and dave.active is False  # until a second admin enables it


def test_login_gives_a_session_that_authenticates_as_the_operator(components: Components, clock: Clock,
                                                                  alice: Operator) -> None:
    token = login(components, alice, alice.code(clock.now))
    assert token.startswith("tvs_")
    actor = components.authenticator.authenticate(Secret(token), ORIGIN)
    assert actor == Actor(id=alice.id, role="admin", name="alice")
    with components.engine.connect() as conn:
        stored = conn.execute(select(operator_sessions.c.token_hash, operator_sessions.c.expires_at)).one()
    assert token.encode() not in bytes(stored.token_hash) and len(bytes(stored.token_hash)) == 32
    assert (stored.expires_at - clock.now).total_seconds() == 900
    assert events(components, "login")[0][:2] == ("allowed", alice.id)


@pytest.mark.parametrize("wrong", ["password", "totp"])
def test_wrong_password_or_totp_is_refused_and_audited(components: Components, clock: Clock, alice: Operator,
                                                       wrong: str) -> None:
    password = "not the password!" if wrong == "password" else alice.password
    code = alice.code(clock.now, steps=5) if wrong == "totp" else alice.code(clock.now)
    with pytest.raises(Unauthenticated):
        login(components, alice, code, password)
    # Only a wrong code after the right password counts towards a lock; a wrong password throttles its source.
    counted = " failures=1" if wrong == "totp" else ""
    assert events(components, "login") == [("denied", alice.id, f"reason={wrong}{counted}")]


def test_an_unknown_username_is_refused_and_audited_without_it(components: Components, clock: Clock,
                                                               alice: Operator) -> None:
    with pytest.raises(Unauthenticated):
        components.operators.login("nobody", Secret(PASSWORD), Secret(alice.code(clock.now)), ORIGIN)
    assert events(components, "login") == [("denied", "anonymous", "reason=unknown_user")]


def test_a_totp_code_is_accepted_once(components: Components, clock: Clock, alice: Operator) -> None:
    code = alice.code(clock.now)
    login(components, alice, code)
    with pytest.raises(Unauthenticated):
        login(components, alice, code)  # the same code again, even with the right password
    actor = Actor(id=alice.id, role="admin", name="alice")
    with pytest.raises(StepUpRequired):
        components.operators.step_up(actor, Secret(code), ORIGIN)
    assert [e[2] for e in events(components, "login")][1] == "reason=totp_replayed failures=1"
    login(components, alice, alice.code(clock.now, steps=1))  # the next code is fine


def test_codes_outside_the_drift_window_are_refused(components: Components, clock: Clock, alice: Operator) -> None:
    for steps in (-2, 2):
        with pytest.raises(Unauthenticated):
            login(components, alice, alice.code(clock.now, steps=steps))
    for steps in (-1, 1):
        login(components, alice, alice.code(clock.now, steps=steps))


def test_lockout_with_backoff(components: Components, clock: Clock, alice: Operator) -> None:
    """Only failures that prove the password (right password, wrong code) lock the account."""
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            login(components, alice, alice.code(clock.now, steps=10))  # a code from five minutes ahead
    assert events(components, "login")[-1][2] == "reason=totp failures=5 locked_seconds=60"
    with pytest.raises(Unauthenticated):  # locked: even the right credentials are refused
        login(components, alice, alice.code(clock.now))
    assert events(components, "login")[-1][2] == "reason=locked"
    clock.advance(61)
    with pytest.raises(Unauthenticated):  # one more failure after the lock: twice as long
        login(components, alice, alice.code(clock.now, steps=10))
    assert events(components, "login")[-1][2] == "reason=totp failures=6 locked_seconds=120"
    clock.advance(119)
    with pytest.raises(Unauthenticated):
        login(components, alice, alice.code(clock.now))
    clock.advance(2)
    login(components, alice, alice.code(clock.now))  # success resets the count
    with components.engine.connect() as conn:
        row = conn.execute(select(operators.c.failed_attempts, operators.c.locked_until)).one()
    assert row.failed_attempts == 0 and row.locked_until is None


def test_wrong_passwords_throttle_only_their_source(components: Components, clock: Clock, alice: Operator) -> None:
    """Issue #19: five anonymous failures used to lock the operator out, doubling to an hour."""
    for _ in range(50):
        with pytest.raises(Unauthenticated):
            login(components, alice, alice.code(clock.now), password="wrong password!!")
    assert events(components, "login")[-1][2] == "reason=throttled"  # that source waits
    with components.engine.connect() as conn:
        row = conn.execute(select(operators.c.failed_attempts, operators.c.locked_until)).one()
    assert row.failed_attempts == 0 and row.locked_until is None  # the account is not locked
    elsewhere = Origin(request_id="req-2", source="198.51.100.4", user_agent="pytest")
    assert components.operators.login(alice.username, Secret(alice.password), Secret(alice.code(clock.now)),
                                      elsewhere).session.token.expose()
    clock.advance(61)  # and the attacker's source itself after a minute
    login(components, alice, alice.code(clock.now, steps=1))


def test_sessions_expire_and_can_be_logged_out(components: Components, clock: Clock, alice: Operator) -> None:
    token = login(components, alice, alice.code(clock.now))
    clock.advance(899)
    actor = components.authenticator.authenticate(Secret(token), ORIGIN)
    clock.advance(1)
    with pytest.raises(Unauthenticated):
        components.authenticator.authenticate(Secret(token), ORIGIN)
    clock.advance(60)
    other = login(components, alice, alice.code(clock.now))
    components.operators.logout(actor, Secret(other), ORIGIN)
    with pytest.raises(Unauthenticated):
        components.authenticator.authenticate(Secret(other), ORIGIN)
    assert events(components, "logout")[0][:2] == ("allowed", alice.id)
    components.trail.flush_failures(force=True)  # failures are counted, then written once per source and window
    assert [e[0] for e in events(components, "authenticate")] == ["denied"]


def test_step_up_needs_a_fresh_code(components: Components, clock: Clock, alice: Operator) -> None:
    actor = components.authenticator.authenticate(Secret(login(components, alice, alice.code(clock.now))), ORIGIN)
    with pytest.raises(StepUpRequired):
        components.operators.step_up(actor, None, ORIGIN, operation="manage_operators")
    with pytest.raises(StepUpRequired):
        components.operators.step_up(actor, Secret("000000"), ORIGIN, operation="manage_operators")
    fresh = alice.code(clock.now, steps=1)
    proof = components.operators.step_up(actor, Secret(fresh), ORIGIN, operation="manage_operators")
    assert proof.actor == actor and proof.at == clock.now
    with pytest.raises(StepUpRequired):
        components.operators.step_up(actor, Secret(fresh), ORIGIN, operation="manage_operators")
    outcomes = [(e[0], e[2]) for e in events(components, "step_up")]
    assert outcomes[0] == ("denied", "operation=manage_operators reason=missing")
    assert outcomes[2] == ("allowed", "operation=manage_operators")
    assert outcomes[3] == ("denied", "operation=manage_operators reason=totp_replayed failures=2")


def test_step_up_refuses_other_roles_and_api_clients(components: Components, clock: Clock) -> None:
    auditor = make_operator(components, "erin", "auditor")
    actor = Actor(id=auditor.id, role="auditor", name="erin")
    with pytest.raises(Forbidden):  # before any code is tried
        components.operators.step_up(actor, Secret(auditor.code(clock.now)), ORIGIN, operation="manage_operators")
    client_id, _ = components.clients.create("admin-bot", "support")
    with pytest.raises(Forbidden):  # an API key is no operator: there is no second factor to ask for
        components.operators.step_up(Actor(id=client_id, role="admin"), Secret("123456"), ORIGIN,
                                     operation="manage_operators")


def test_no_password_or_code_reaches_the_audit_trail(components: Components, clock: Clock, alice: Operator) -> None:
    codes = [alice.code(clock.now, steps=s) for s in (-1, 0, 1)]
    login(components, alice, codes[0])
    with pytest.raises(Unauthenticated):
        login(components, alice, codes[1], password="a wrong password")
    with components.engine.connect() as conn:
        rows = [" ".join(str(v) for v in row) for row in conn.execute(select(audit_events)).all()]
    text = "\n".join(rows)
    for secret in (PASSWORD, "a wrong password", *codes, alice.seed):
        assert secret not in text


def test_no_operation_commits_after_the_operators_disable_was_acknowledged(components: Components,
                                                                           clock: Clock) -> None:
    """Issue #17: the session was checked in an earlier transaction; the operation's own re-reads the row.

    The disable runs as a second admin's approval would (`run_disable`), held open mid-transaction while
    the officer files a request: on PostgreSQL the filing waits for the disable and is then refused; on
    SQLite (one writer) it runs after the disable and is refused the same way.
    """
    officer = make_operator(components, "olive", "privacy_officer")
    actor = Actor(id=officer.id, role="privacy_officer")
    components.privacy.register_request(actor, "cust-1", "access", Origin())  # allowed while enabled
    outcome: list[object] = []
    disabling = components.engine.begin()
    conn = disabling.__enter__()
    try:
        components.operators.run_disable(conn, Actor(id="op_admin", role="admin"), {"operator_id": officer.id},
                                         Origin())
        worker = threading.Thread(target=lambda: outcome.append(_attempt(components, actor)), daemon=True)
        worker.start()
        worker.join(0.5 if components.engine.dialect.name == "postgresql" else 0)
    finally:
        disabling.__exit__(None, None, None)  # the disable commits: acknowledged from here on
    worker.join(30)
    assert outcome and isinstance(outcome[0], Forbidden), outcome
    with components.engine.connect() as conn:
        filed = conn.execute(select(privacy_requests.c.id).where(privacy_requests.c.subject_id == "cust-2")).all()
    assert filed == []


def _attempt(components: Components, actor: Actor) -> object:
    try:
        return components.privacy.register_request(actor, "cust-2", "erasure", Origin())
    except VaultError as error:
        return error


def test_a_disabled_operator_neither_detokenizes_nor_reads_the_trail(components: Components) -> None:
    """The same re-read on the paths outside `_audited`: detokenize (plaintext for `legal`) and audit reads."""
    officer = make_operator(components, "olive", "privacy_officer")
    auditor = make_operator(components, "audrey", "auditor")
    token = components.tokens.tokenize(Actor(id="cli_checkout", role="checkout"),
                                       [TokenRequest(kind="email", value="c1@example.com", subject_id="cust-1")],
                                       Origin())[0]
    assert isinstance(token, TokenRecord)
    with components.engine.begin() as conn:  # both disables acknowledged after their sessions were checked
        for who in (officer, auditor):
            components.operators.run_disable(conn, Actor(id="op_admin", role="admin"), {"operator_id": who.id},
                                             Origin())
    with pytest.raises(Forbidden):
        components.tokens.detokenize(Actor(id=officer.id, role="privacy_officer"), [token.token], "legal", Origin())
    with pytest.raises(Forbidden):
        components.audit_log.events(Actor(id=auditor.id, role="auditor"), EventQuery(limit=10), Origin())
