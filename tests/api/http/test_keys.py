"""Admins rotate, follow and retire keys over HTTP: sessions, step-up, and a second admin for retirement."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import Clock, auth, make_components
from tests.support.cards import fill
from tests.support.operators import Operator, bearer, login, make_operator
from vault.audit.trail import Actor, Origin


class Admin:
    def __init__(self, client: FlaskClient, parts: Components, clock: Clock, name: str) -> None:
        self.operator: Operator = make_operator(parts, name, "admin")
        self.clock = clock
        self.session = login(client, self.operator, self.operator.code(clock.now))

    def stepped(self) -> dict[str, str]:
        self.clock.advance(30)
        return {**auth(self.session), "X-TOTP": self.operator.code(self.clock.now)}


@pytest.fixture
def setup(tmp_path: Path, database_url: str, clock: Clock) -> tuple[FlaskClient, Components]:
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_KEY_CACHE_SECONDS="0.2")
    return create_app(parts=parts).test_client(), parts


def test_rotate_follow_and_retire_with_two_admins(setup: tuple[FlaskClient, Components], clock: Clock) -> None:
    client, parts = setup
    expected = fill(parts, 300)
    first, second = Admin(client, parts, clock, "admin-one"), Admin(client, parts, clock, "admin-two")
    listing = client.get("/v1/keys", headers=auth(first.session))
    assert listing.status_code == 200 and listing.get_json()["kek"]["latest_version"] == 1
    assert client.post("/v1/keys/rotate", json={}, headers=auth(first.session)).status_code == 401  # no step-up
    started = client.post("/v1/keys/rotate", json={"domain_keys": True}, headers=first.stepped())
    assert started.status_code == 202
    job_id = started.get_json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        state = client.get(f"/v1/keys/jobs/{job_id}", headers=auth(first.session)).get_json()
        if state["status"] != "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
        clock.advance(1)  # the job waits out other processes' key caches on the injected clock
    assert state["status"] == "done" and state["done"] == state["total"]
    pending = client.post("/v1/keys/retire", json={"below": 2}, headers=first.stepped())
    assert pending.status_code == 202
    approval = pending.get_json()["approval"]
    assert approval["status"] == "pending" and parts.provider.info().min_decryption_version == 1
    own = client.post(f"/v1/approvals/{approval['id']}/approve", headers=first.stepped())
    assert own.status_code == 403  # dual control: not by the requester
    done = client.post(f"/v1/approvals/{approval['id']}/approve", headers=second.stepped())
    assert done.status_code == 200, done.get_json()
    assert parts.provider.info().min_decryption_version == 2
    for result in parts.tokens.detokenize(Actor(id="gw", role="payment_gateway"), list(expected), "payment",
                                          Origin()):
        assert result.value["pan"] == expected[result.token]


def test_key_endpoints_refuse_other_roles(setup: tuple[FlaskClient, Components]) -> None:
    client, parts = setup
    for role in ("checkout", "payment_gateway", "support", "auditor"):
        key = bearer(parts, role, f"k-{role}")
        assert client.get("/v1/keys", headers=auth(key)).status_code == 403
        assert client.post("/v1/keys/rotate", json={}, headers=auth(key)).status_code == 403
