"""Issue #15 item 1, the remaining tables, attacked over HTTP by an insider with the database.

Each test edits one row the way an insider with write access to every table would, where the
edit would have widened access, redirected a key job or moved a legal date, and shows that
the request relying on the row is refused (403 integrity_failure), audited and alerted.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Table, delete, select, update

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import Clock, auth, make_components
from tests.support.operators import bearer, login, make_operator
from vault.audit.trail import HOST, Actor, Origin
from vault.errors import IntegrityFailure
from vault.storage.schema import (
    audit_events,
    domain_keys,
    key_jobs,
    privacy_requests,
    relay_routes,
    retained_records,
    totp_uses,
)
from vault.tokens.records import TokenRecord, TokenRequest

OFFICER = Actor(id="op_po", role="privacy_officer")


def _integrity_events(parts: Components) -> int:
    with parts.engine.connect() as conn:
        return len(conn.execute(select(audit_events.c.seq).where(audit_events.c.action == "integrity")).all())


def _edit(parts: Components, table: Table, *where: Any, **values: Any) -> None:
    with parts.engine.begin() as conn:
        assert conn.execute(update(table).where(*where).values(**values)).rowcount == 1


def _refused(answer: Any) -> None:
    assert answer.status_code == 403, answer.get_json()
    assert answer.get_json()["error"]["code"] == "integrity_failure"


@pytest.mark.parametrize("edit", ["due_date_moved", "closed_request_reopened", "request_moved_to_another_subject"])
def test_an_edited_privacy_request_is_refused(edit: str, client: FlaskClient, components: Components,
                                              clock: Clock) -> None:
    officer = bearer(components, "privacy_officer")
    made = client.post("/v1/subjects/cust-1/requests", json={"right": "erasure"}, headers=auth(officer))
    assert made.status_code == 201
    request_id = made.get_json()["id"]
    if edit == "due_date_moved":  # out of the "due within 30 days" reminders
        _edit(components, privacy_requests, privacy_requests.c.id == request_id, due_at=clock() + timedelta(days=300))
    elif edit == "closed_request_reopened":
        assert client.post(f"/v1/privacy/requests/{request_id}/close", json={"outcome": "done"},
                           headers=auth(officer)).status_code == 204
        _edit(components, privacy_requests, privacy_requests.c.id == request_id, status="open")
    else:
        _edit(components, privacy_requests, privacy_requests.c.id == request_id, subject_id="cust-2")
    before = _integrity_events(components)
    _refused(client.get("/v1/privacy/requests?due_within_days=30", headers=auth(officer)))
    assert _integrity_events(components) == before + 1


def _erased_with_a_retained_card(parts: Components) -> str:
    card = {"pan": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2099, "holder": "Ada Lovelace"}
    made = parts.tokens.tokenize(Actor(id="cli_checkout", role="checkout"),
                                 [TokenRequest(kind="card", value=card, subject_id="cust-1")], Origin())[0]
    assert isinstance(made, TokenRecord)
    parts.privacy.erase(OFFICER, "cust-1", Origin())
    return made.token


def test_a_retention_date_moved_earlier_neither_purges_nor_exports(client: FlaskClient, components: Components,
                                                                    clock: Clock) -> None:
    token = _erased_with_a_retained_card(components)
    # The insider wants the tax record gone now (or, moved later, kept past its legal date).
    _edit(components, retained_records, retained_records.c.token == token, retain_until=clock() - timedelta(days=1))
    before = _integrity_events(components)
    with pytest.raises(IntegrityFailure):
        components.retention.purge(Actor(id="cli:purge", role="system"))
    with components.engine.connect() as conn:
        assert conn.execute(select(retained_records.c.token)).scalar() == token  # nothing purged
    _refused(client.get("/v1/subjects/cust-1/export", headers=auth(bearer(components, "privacy_officer"))))
    assert _integrity_events(components) == before + 2


def test_a_retention_date_kept_in_place_purges_on_time(components: Components, clock: Clock) -> None:
    _erased_with_a_retained_card(components)
    clock.advance(3651 * 24 * 3600)
    assert components.retention.purge(Actor(id="cli:purge", role="system"))["expired_retained_records"] == 1


@pytest.fixture
def slow_caches(tmp_path: Path, database_url: str, clock: Clock) -> tuple[FlaskClient, Components]:
    """Workers cache domain keys for an hour: a rotation waits that long before destroying the old key."""
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_KEY_CACHE_SECONDS="3600")
    return create_app(parts=parts).test_client(), parts


def test_a_key_job_told_the_caches_expired_does_not_destroy_the_old_key_early(
        slow_caches: tuple[FlaskClient, Components], clock: Clock) -> None:
    """Rewrapping runs on the job row's parameters: the insider back-dates `rotated_at` so the old domain key
    is destroyed while other workers may still seal new data keys under it (those keys would never open)."""
    client, parts = slow_caches
    admin = make_operator(parts, "admin-one", "admin")
    session = login(client, admin, admin.code(clock.now))
    clock.advance(30)
    stepped = {**auth(session), "X-TOTP": admin.code(clock.now)}
    with parts.engine.connect() as conn:
        old = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == "data")).scalar_one()
    started = client.post("/v1/keys/rotate", json={"domain_keys": True}, headers=stepped)
    assert started.status_code == 202, started.get_json()
    job_id = started.get_json()["job_id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/keys/jobs/{job_id}", headers=auth(session)).get_json()["phase"] != "wait_key_caches":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with parts.engine.begin() as conn:
        params = conn.execute(select(key_jobs.c.params).where(key_jobs.c.id == job_id)).scalar_one()
        back = params.replace('"rotated_at": "', '"rotated_at": "2000-01-01T00:00:00Z", "was": "')
        conn.execute(update(key_jobs).where(key_jobs.c.id == job_id).values(params=back))
    before = _integrity_events(parts)
    time.sleep(1.0)  # the running worker re-reads the row at its next step
    _refused(client.get(f"/v1/keys/jobs/{job_id}", headers=auth(session)))
    _refused(client.post(f"/v1/keys/jobs/{job_id}/resume", headers=auth(session)))
    time.sleep(1.0)
    with parts.engine.connect() as conn:
        assert conn.execute(select(domain_keys.c.id).where(domain_keys.c.id == old)).scalar() == old
    assert _integrity_events(parts) >= before + 2


def _route(**changes: Any) -> dict[str, Any]:
    return {"name": "psp", "direction": "outbound", "upstream": "https://api.psp.example", "paths": ["/v1/charges"],
            "roles": ["payment_gateway"], "purposes": ["payment"], "substitute": {"body": ["card"]}, **changes}


def test_a_relay_route_rolled_back_by_unapproving_its_newest_version_is_refused(
        client: FlaskClient, components: Components) -> None:
    components.relay_routes.propose(HOST, _route(roles=["payment_gateway", "shipping"]), Origin())
    components.relay_routes.propose(HOST, _route(), Origin())  # v2 takes shipping off the route
    _edit(components, relay_routes, relay_routes.c.name == "psp", relay_routes.c.version == 2, state="proposed")
    before = _integrity_events(components)
    _refused(client.get("/v1/relay-routes", headers=auth(bearer(components, "admin"))))
    assert _integrity_events(components) == before + 1


def test_a_totp_code_replayed_after_its_used_step_was_deleted_is_refused(
        client: FlaskClient, components: Components, clock: Clock) -> None:
    """A MAC cannot see a deleted `totp_uses` row; the operator row's MACed `totp_last_step` still refuses."""
    operator = make_operator(components, "aud-replay", "auditor")
    code = operator.code(clock.now)
    body = {"username": operator.username, "password": operator.password, "totp": code}
    assert client.post("/v1/auth/login", json=body).status_code == 200
    with components.engine.begin() as conn:  # the insider forgets the code was used
        assert conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == operator.id)).rowcount == 1
    assert client.post("/v1/auth/login", json=body).status_code == 401
    clock.advance(30)
    assert client.post("/v1/auth/login", json={**body, "totp": operator.code(clock.now)}).status_code == 200
