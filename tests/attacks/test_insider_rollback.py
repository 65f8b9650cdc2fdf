"""Rows deleted or put back in time by an insider with the database (issue #15 item 2, issue #20).

A row MAC cannot see a deleted row nor an authentic older copy restored over a newer one. Each test
here makes such a change the way an insider would (SQL on the tables, no key), then uses the row as
the vault does: access never widens, because the decision also asks the audit trail
(vault.audit.facts), and the refusal is audited as an `integrity` event. Deleting the witnessing
event as well breaks the chain, which the integrity watch (vault.audit.watch) turns into a
lockdown. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Table, delete, func, insert, select, update

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import Clock
from tests.support.operators import Operator, make_operator
from tests.vault.access.test_approvals import request_disable, step_up
from tests.vault.relay.test_routes import doc
from vault.access.clients import ClientRegistry
from vault.audit.chain import audit_key, mac_of
from vault.audit.trail import HOST, Actor, AuditEvent, Origin, allocate_seqs
from vault.errors import IntegrityFailure, IntegrityLockdown, LegalHold, Unauthenticated
from vault.keys.row_mac import RowMacs
from vault.relay.routes import RouteBook, parse_config
from vault.secret import Secret
from vault.storage.schema import (
    approvals,
    audit_events,
    clients,
    consents,
    data_keys,
    disclosures,
    holds,
    operator_sessions,
    operators,
    relay_routes,
    subjects,
    tokens,
)
from vault.tokens.records import TokenRecord, TokenRequest
from vault.tokens.subjects import held_subjects

OFFICER = Actor(id="op_officer", role="privacy_officer")
SUPPORT = Actor(id="cli_support", role="support")
MARKETING = Actor(id="cli_marketing", role="marketing")


def _row(parts: Components, table: Table, key: Any) -> dict[str, Any]:
    pk = table.primary_key.columns.values()[0]
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(table).where(pk == key)).mappings().one())


def _restore(parts: Components, table: Table, old: dict[str, Any]) -> None:
    """Put an authentic older copy back (MAC and all): over the current row, or re-inserted if it is gone."""
    pk = table.primary_key.columns.values()[0]
    with parts.engine.begin() as conn:
        if not conn.execute(update(table).where(pk == old[pk.name]).values(**old)).rowcount:
            conn.execute(insert(table).values(**old))


def _delete(parts: Components, table: Table, *where: Any) -> None:
    with parts.engine.begin() as conn:
        assert conn.execute(delete(table).where(*where)).rowcount >= 1


def _trail_refusals(parts: Components) -> list[str]:
    with parts.engine.connect() as conn:
        return [str(d) for d in conn.execute(select(audit_events.c.detail).where(
            audit_events.c.action == "integrity", audit_events.c.outcome == "denied")).scalars()]


def _fresh_clients(parts: Components, clock: Clock) -> ClientRegistry:
    return ClientRegistry(parts.engine, parts.keys, parts.policy, parts.trail, cache_seconds=0, clock=clock)


def _login(parts: Components, clock: Clock, who: Operator) -> Any:
    clock.advance(30)  # a fresh TOTP step each time
    return parts.operators.login(who.username, Secret(who.password), Secret(who.code(clock.now)), Origin())


def _email(parts: Components, subject_id: str) -> str:
    result = parts.tokens.tokenize(Actor(id="cli_checkout", role="checkout"),
                                   [TokenRequest(kind="email", value=f"{subject_id}@example.com",
                                                 subject_id=subject_id)], Origin())[0]
    assert isinstance(result, TokenRecord)
    return result.token


def _read(parts: Components, actor: Actor, token: str, purpose: str) -> Any:
    item = parts.tokens.detokenize(actor, [token], purpose, Origin())[0]
    if item.error is not None:
        raise item.error
    return item.value


# -- clients ------------------------------------------------------------------------------------


def test_a_revoked_clients_pre_revocation_copy_does_not_authenticate(components: Components, clock: Clock) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _row(components, clients, client_id)
    components.clients.revoke(client_id)
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())
    assert "table=clients (trail)" in _trail_refusals(components)


def test_a_suspended_clients_pre_suspension_copy_does_not_authenticate(components: Components,
                                                                       clock: Clock) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _row(components, clients, client_id)
    actor = Actor(id=client_id, role="payment_gateway")
    with components.engine.begin() as conn:  # what the guessing guard does when the misses add up
        RowMacs(components.keys).update(conn, clients, client_id, {"suspended_at": clock.now})
        components.trail.record(conn, [AuditEvent(at=clock.now, actor=actor.id, role=actor.role,
                                                  action="suspend_client", outcome="denied",
                                                  error_code="guessing_suspected", detail=f"client={client_id}")])
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())


# -- operators and sessions ---------------------------------------------------------------------


def test_a_disabled_operators_earlier_row_neither_logs_in_nor_keeps_its_session(components: Components,
                                                                                 clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    mallory = make_operator(components, "mallory", "admin")
    token = _login(components, clock, mallory).session.token
    mallory_before = _row(components, operators, mallory.id)
    with components.engine.connect() as conn:
        session_before = dict(conn.execute(select(operator_sessions)).mappings().one())
    request_id = request_disable(components, clock, alice, mallory)
    components.approvals.approve(step_up(components, clock, bob, 1), request_id, Origin())
    _restore(components, operators, mallory_before)
    _delete(components, operator_sessions, operator_sessions.c.id == session_before["id"])
    _restore(components, operator_sessions, session_before)
    with pytest.raises(IntegrityFailure):
        components.operators.authenticate(token, Origin())
    with pytest.raises(IntegrityFailure):
        _login(components, clock, mallory)


def test_an_operators_row_from_before_a_re_enrolment_does_not_log_in(components: Components, clock: Clock) -> None:
    """The old password and authenticator (a leaked phone, say) must stay dead after the operator re-enrols."""
    alice = make_operator(components, "alice", "auditor")
    before = _row(components, operators, alice.id)
    seed_key = _row(components, data_keys, before["totp_key_id"])  # shredded by the re-enrolment
    components.operators.reenrol_self(step_up(components, clock, alice, 1), Secret(alice.password), Origin())
    _restore(components, data_keys, seed_key)
    _restore(components, operators, before)
    with pytest.raises(IntegrityFailure):
        _login(components, clock, alice)
    assert "table=operators (trail)" in _trail_refusals(components)


def test_a_logged_out_session_put_back_does_not_authenticate(components: Components, clock: Clock) -> None:
    alice = make_operator(components, "alice", "auditor")
    token = _login(components, clock, alice).session.token
    with components.engine.connect() as conn:
        before = dict(conn.execute(select(operator_sessions)).mappings().one())
    components.operators.logout(Actor(id=alice.id, role="auditor"), token, Origin())
    _delete(components, operator_sessions, operator_sessions.c.id == before["id"])
    _restore(components, operator_sessions, before)  # deleted, then re-inserted as it was
    with pytest.raises(IntegrityFailure):
        components.operators.authenticate(token, Origin())
    assert "table=operator_sessions (trail)" in _trail_refusals(components)


# -- dual control, disclosures --------------------------------------------------------------------


def test_an_executed_request_restored_to_pending_cannot_be_approved_again(components: Components,
                                                                          clock: Clock) -> None:
    team = {n: make_operator(components, n, "admin") for n in ("alice", "bob", "carol", "mallory")}
    request_id = request_disable(components, clock, team["alice"], team["mallory"])
    before = _row(components, approvals, request_id)
    mallory_before = _row(components, operators, team["mallory"].id)
    components.approvals.approve(step_up(components, clock, team["bob"], 1), request_id, Origin())
    # The replay: the executed request put back to pending (and its target as it was, so it could run).
    _restore(components, operators, mallory_before)
    _restore(components, approvals, before)
    with pytest.raises(IntegrityFailure):
        components.approvals.approve(step_up(components, clock, team["carol"], 1), request_id, Origin())
    assert _row(components, approvals, request_id)["status"] == "pending"


def test_a_delivered_disclosure_restored_is_not_collectable_again(components: Components, clock: Clock) -> None:
    first, second = Actor(id="op_po_a", role="privacy_officer"), Actor(id="op_po_b", role="privacy_officer")
    _email(components, "cust-a")
    disclosure_id = components.disclosures.request(first, subject_id="cust-a", token_list=[], case_reference="c-1",
                                                   authority="court", justification="order",
                                                   origin=Origin())["id"]
    components.disclosures.approve(second, disclosure_id, Origin())
    before = _row(components, disclosures, disclosure_id)
    assert components.disclosures.collect(first, disclosure_id, Origin())["values"]
    _restore(components, disclosures, before)
    with pytest.raises(IntegrityFailure):
        components.disclosures.collect(first, disclosure_id, Origin())


# -- subjects: holds, opt-outs, restrictions, minors ----------------------------------------------


def test_a_deleted_hold_still_blocks_erasure_deletion_and_the_purge(components: Components, clock: Clock) -> None:
    token = _email(components, "cust-a")
    components.privacy.add_hold(OFFICER, "cust-a", "tax audit", clock() + timedelta(days=30), Origin())
    _delete(components, holds, holds.c.subject_id == "cust-a")
    with pytest.raises(IntegrityFailure):
        components.privacy.erase(OFFICER, "cust-a", Origin())
    with pytest.raises((IntegrityFailure, LegalHold)):
        components.tokens.delete(OFFICER, token, Origin())
    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == token)).first() is not None
        assert held_subjects(conn, clock.now, RowMacs(components.keys)) == ["cust-a"]


def test_a_released_hold_does_not_block(components: Components, clock: Clock) -> None:
    _email(components, "cust-a")
    hold = components.privacy.add_hold(OFFICER, "cust-a", "tax audit", clock() + timedelta(days=30), Origin())["id"]
    with components.engine.begin() as conn:  # as a second officer's approval of `release_hold` runs it
        components.privacy.run_release_hold(conn, OFFICER, {"subject_id": "cust-a", "hold_id": hold}, Origin())
    assert components.privacy.erase(OFFICER, "cust-a", Origin())["erased"]


def test_a_deleted_opt_out_does_not_let_marketing_read(components: Components, clock: Clock) -> None:
    token = _email(components, "cust-a")
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    _delete(components, consents, consents.c.subject_id == "cust-a")
    with pytest.raises(IntegrityFailure):
        _read(components, MARKETING, token, "marketing")


def test_an_opt_in_after_an_opt_out_reads(components: Components, clock: Clock) -> None:
    token = _email(components, "cust-a")
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    clock.advance(1)
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": True}, "web", Origin())
    assert _read(components, MARKETING, token, "marketing") == "cust-a@example.com"


def test_a_deleted_restriction_and_a_pre_minor_copy_do_not_widen(components: Components, clock: Clock) -> None:
    restricted = _email(components, "cust-a")
    components.privacy.restrict(OFFICER, "cust-a", True, Origin())
    components.privacy.set_consents(OFFICER, "cust-b", {"profiling": True}, "web", Origin())  # creates the row
    before = _row(components, subjects, "cust-b")
    components.privacy.mark_minor(OFFICER, "cust-b", Origin())  # erases what it held; new data comes later
    minor = _email(components, "cust-b")
    _delete(components, subjects, subjects.c.id == "cust-a")
    _restore(components, subjects, before)
    with pytest.raises(IntegrityFailure):
        _read(components, SUPPORT, restricted, "support")
    with pytest.raises(IntegrityFailure):
        _read(components, MARKETING, minor, "marketing")


# -- forged fact events: inserted without the audit key ------------------------------------------------


def _forge(parts: Components, clock: Clock, **values: Any) -> None:
    """Append an event the way an insider can: any columns, on a real chain, but a MAC made without the key."""
    with parts.engine.begin() as conn:
        last = dict(conn.execute(select(audit_events).order_by(audit_events.c.seq.desc()).limit(1)).mappings().one())
        head = conn.execute(select(func.max(audit_events.c.chain_seq))
                            .where(audit_events.c.writer == last["writer"])).scalar_one()
        forged = {**last, "seq": allocate_seqs(conn, 1)[0], "chain_seq": head + 1, "prev_mac": last["mac"],
                  "mac": secrets.token_bytes(32), "at": clock.now, "outcome": "allowed", "error_code": None,
                  "actor": "op_mallory", "role": "privacy_officer", "token": None, "kind": None,
                  "subject_id": None, "purpose": None, "key_id": None, **values}
        conn.execute(insert(audit_events).values(**forged))


def _copy_event(parts: Components, clock: Clock, seq: int) -> None:
    """Replay an authentic event: the same row, MAC and all, appended under a new `seq` on its own chain."""
    with parts.engine.connect() as conn:
        event = dict(conn.execute(select(audit_events).where(audit_events.c.seq == seq)).mappings().one())
    _forge(parts, clock, **{k: v for k, v in event.items() if k not in ("seq", "chain_seq", "prev_mac")})


def test_a_forged_release_does_not_lift_a_deleted_hold(components: Components, clock: Clock) -> None:
    token = _email(components, "cust-a")
    hold = components.privacy.add_hold(OFFICER, "cust-a", "tax audit", clock() + timedelta(days=30), Origin())["id"]
    _delete(components, holds, holds.c.subject_id == "cust-a")
    _forge(components, clock, action="release_hold", subject_id="cust-a", entity="subject:cust-a",
           detail=f"hold={hold}")
    with pytest.raises(IntegrityFailure):
        components.privacy.erase(OFFICER, "cust-a", Origin())
    with pytest.raises((IntegrityFailure, LegalHold)):
        components.tokens.delete(OFFICER, token, Origin())
    with components.engine.connect() as conn, pytest.raises(IntegrityFailure):
        held_subjects(conn, clock.now, RowMacs(components.keys))  # the purge stops rather than guess
    assert "table=audit_events (trail)" in _trail_refusals(components)


def test_an_authentic_opt_in_replayed_after_the_opt_out_does_not_let_marketing_read(components: Components,
                                                                                     clock: Clock) -> None:
    token = _email(components, "cust-a")
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": True}, "web", Origin())
    with components.engine.connect() as conn:
        opt_in = conn.execute(select(audit_events.c.seq).where(audit_events.c.action == "consent")).scalar_one()
    clock.advance(1)
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    _delete(components, consents, consents.c.subject_id == "cust-a")
    _copy_event(components, clock, opt_in)  # the opt-in, once more, now after the opt-out
    with pytest.raises(IntegrityFailure):  # the copy's MAC covered its old seq
        _read(components, MARKETING, token, "marketing")


def _as_before_the_upgrade(parts: Components, seq: int) -> None:
    """Rewrite an event as the vault wrote it before MAC scheme 3 (whose MAC left `entity` out)."""
    with parts.engine.begin() as conn:
        event = dict(conn.execute(select(audit_events).where(audit_events.c.seq == seq)).mappings().one())
        event["mac_scheme"] = 2
        key = audit_key(parts.keys, conn, event["mac_key_id"])
        conn.execute(update(audit_events).where(audit_events.c.seq == seq)
                     .values(mac_scheme=2, mac=mac_of(key, event["prev_mac"], event)))


def test_a_pre_upgrade_opt_in_re_pointed_at_another_subject_does_not_count(components: Components,
                                                                           clock: Clock) -> None:
    token, other = _email(components, "cust-a"), _email(components, "cust-b")
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    clock.advance(1)
    components.privacy.set_consents(OFFICER, "cust-b", {"marketing": True}, "web", Origin())
    with components.engine.connect() as conn:
        opt_out, opt_in = conn.execute(select(audit_events.c.seq).where(audit_events.c.action == "consent")
                                       .order_by(audit_events.c.seq)).scalars().all()
    _as_before_the_upgrade(components, opt_out)
    _as_before_the_upgrade(components, opt_in)
    assert _read(components, MARKETING, other, "marketing") == "cust-b@example.com"  # old facts still count
    _delete(components, consents, consents.c.subject_id == "cust-a")
    with pytest.raises(IntegrityFailure):  # the pre-upgrade opt-out still counts
        _read(components, MARKETING, token, "marketing")
    with components.engine.begin() as conn:  # cust-b's opt-in now claims to be cust-a's: its MAC does not see it
        conn.execute(update(audit_events).where(audit_events.c.seq == opt_in).values(entity="subject:cust-a"))
    with pytest.raises(IntegrityFailure):
        _read(components, MARKETING, token, "marketing")


def test_a_forged_opt_in_does_not_let_marketing_read(components: Components, clock: Clock) -> None:
    token = _email(components, "cust-a")
    components.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    _delete(components, consents, consents.c.subject_id == "cust-a")
    _forge(components, clock, action="consent", subject_id="cust-a", entity="subject:cust-a", detail="marketing=True")
    with pytest.raises(IntegrityFailure):
        _read(components, MARKETING, token, "marketing")


def test_a_forged_resume_does_not_revive_a_suspended_client(components: Components, clock: Clock) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _row(components, clients, client_id)
    with components.engine.begin() as conn:  # what the guessing guard does when the misses add up
        RowMacs(components.keys).update(conn, clients, client_id, {"suspended_at": clock.now})
        components.trail.record(conn, [AuditEvent(at=clock.now, actor=client_id, role="payment_gateway",
                                                  action="suspend_client", outcome="denied",
                                                  error_code="guessing_suspected", detail=f"client={client_id}")])
    _restore(components, clients, before)
    _forge(components, clock, action="resume_client", entity=f"client:{client_id}", detail=f"client={client_id}")
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())


def test_a_forged_enable_does_not_revive_a_disabled_operator(components: Components, clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    mallory = make_operator(components, "mallory", "admin")
    before = _row(components, operators, mallory.id)
    components.approvals.approve(step_up(components, clock, bob, 1), request_disable(components, clock, alice, mallory),
                                 Origin())
    _restore(components, operators, before)
    _forge(components, clock, action="enable_operator", entity=f"operator:{mallory.id}",
           detail=f"operator={mallory.id}")
    with pytest.raises(IntegrityFailure):
        _login(components, clock, mallory)


# -- relay routes (issue #20) -----------------------------------------------------------------------


def test_deleting_a_routes_newest_approved_version_does_not_bring_back_the_previous(
        components: Components) -> None:
    components.relay_routes.propose(HOST, doc(), Origin())  # v1, wide
    components.relay_routes.propose(HOST, doc(roles=["payment_gateway"], enabled=False), Origin())  # v2: disabled
    _delete(components, relay_routes, relay_routes.c.name == "psp", relay_routes.c.version == 2)
    with pytest.raises(IntegrityFailure), components.engine.begin() as conn:
        RouteBook(components.keys).current(conn, "psp")


def test_a_route_approved_by_a_second_admin_is_witnessed_too(components: Components, clock: Clock) -> None:
    components.relay_routes.propose(HOST, doc(), Origin())
    book = RouteBook(components.keys)
    with components.engine.begin() as conn:
        version, _ = book.propose(conn, "op_a", parse_config(doc(paths=["/v1/narrow"])))
        components.relay_routes.run_approval(conn, Actor(id="op_b", role="admin"),
                                             {"route": "psp", "version": version}, Origin())
    _delete(components, relay_routes, relay_routes.c.name == "psp", relay_routes.c.version == version)
    with pytest.raises(IntegrityFailure), components.engine.begin() as conn:
        book.current(conn, "psp")


# -- deleting the witness too: the integrity watch locks ----------------------------------------


def test_deleting_the_witnessing_event_too_locks_the_vault(components: Components, clock: Clock) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    _, other_key = components.clients.create("shipping", "shipping")
    admin = make_operator(components, "alice", "admin")
    before = _row(components, clients, client_id)
    components.clients.revoke(client_id)
    components.trail.checkpoint(all_writers=True)
    assert components.watch.check() is None  # a clean trail: no lockdown
    _restore(components, clients, before)
    _delete(components, audit_events, audit_events.c.entity == f"client:{client_id}")
    registry = _fresh_clients(components, clock)
    assert registry.authenticate(key, Origin()).id == client_id  # the restore alone works again...
    assert components.watch.check() is not None  # ...until the watch's next pass
    assert components.lockdown.reason is not None
    with pytest.raises(IntegrityLockdown):
        components.authenticator.authenticate(key, Origin())
    with pytest.raises(IntegrityLockdown):
        components.authenticator.authenticate(other_key, Origin())  # every API key
    session = _login(components, clock, admin).session.token
    assert components.authenticator.authenticate(session, Origin()).id == admin.id  # investigators are served
    with components.engine.connect() as conn:
        assert conn.execute(select(audit_events.c.seq).where(
            audit_events.c.action == "integrity", audit_events.c.error_code == "integrity_lockdown")).first()


def test_a_fact_hidden_behind_the_verified_point_locks_the_vault(components: Components, clock: Clock) -> None:
    """The incremental walk never re-reads old events: the watch compares the fact events themselves."""
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _row(components, clients, client_id)
    components.clients.revoke(client_id)
    assert components.watch.check() is None  # first pass: the whole trail
    for n in range(5):  # later events on the same chains, anchored: the resume point moves past the revocation
        _email(components, f"cust-{n}")
        _, other_key = components.clients.create(f"c{n}", "shipping")
    components.trail.checkpoint(all_writers=True)
    assert components.watch.check() is None
    with components.engine.begin() as conn:  # the revocation renamed, so no lookup finds it
        conn.execute(update(audit_events).where(audit_events.c.entity == f"client:{client_id}")
                     .values(action="rotate_client_key"))
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):  # the renamed event fails its own MAC: refused at once
        _fresh_clients(components, clock).authenticate(key, Origin())
    broken = components.watch.check()  # and the watch's next pass locks the vault
    assert broken is not None
    with pytest.raises(IntegrityLockdown):
        components.authenticator.authenticate(other_key, Origin())  # every API key


def test_the_lockdown_is_served_over_http_as_503(components: Components, clock: Clock) -> None:
    _, key = components.clients.create("shop", "checkout")
    app: Flask = create_app(parts=components)
    http = app.test_client()
    headers = {"Authorization": f"Bearer {key.expose()}"}
    body = {"kind": "email", "value": "a@example.com"}
    assert http.post("/v1/tokens", json=body, headers=headers).status_code == 201
    components.trail.checkpoint(all_writers=True)
    with components.engine.begin() as conn:  # any anchored event changed: the chain is broken
        conn.execute(update(audit_events).where(audit_events.c.action == "create_client").values(detail="x"))
    assert components.watch.check() is not None
    response = http.post("/v1/tokens", json=body, headers=headers)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "integrity_lockdown"


def test_a_revoked_client_restored_is_refused_over_http(components: Components, clock: Clock) -> None:
    client_id, key = components.clients.create("shop", "checkout")
    before = _row(components, clients, client_id)
    components.clients.revoke(client_id)
    _restore(components, clients, before)
    http = create_app(parts=components).test_client()
    response = http.post("/v1/tokens", json={"kind": "email", "value": "a@example.com"},
                         headers={"Authorization": f"Bearer {key.expose()}"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "integrity_failure"


def test_the_watch_does_not_lock_a_busy_clean_vault(components: Components, clock: Clock) -> None:
    _, key = components.clients.create("gateway", "payment_gateway")
    for round_ in range(3):
        for n in range(20):
            _email(components, f"cust-{round_}-{n}")
        if round_ == 1:
            components.trail.checkpoint(all_writers=True)
        assert components.watch.check() is None
    assert components.lockdown.reason is None
    assert components.authenticator.authenticate(key, Origin()).role == "payment_gateway"


def test_unauthenticated_is_not_a_lockdown(components: Components) -> None:
    with pytest.raises(Unauthenticated):
        components.authenticator.authenticate(Secret("tvk_nope"), Origin())
