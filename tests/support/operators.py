"""Operators for tests: create and enrol one, compute its TOTP codes at the injected clock's time, log in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs, urlparse

import pyotp
from flask.testing import FlaskClient
from sqlalchemy import delete

from api.wiring import Components
from vault.access.totp import STEP_SECONDS
from vault.audit.trail import HOST, Origin
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import operators, totp_uses

PASSWORD = "correct horse battery staple"


@dataclass
class Operator:
    id: str
    username: str
    role: str
    password: str
    seed: str

    def code(self, at: datetime, steps: int = 0) -> str:
        """The TOTP code `steps` time steps from `at` (-1, 0 and 1 are all accepted at `at`)."""
        return pyotp.TOTP(self.seed).at(at.timestamp() + steps * STEP_SECONDS)


def seed_of(uri: str) -> str:
    return parse_qs(urlparse(uri).query)["secret"][0]


def enrol(components: Components, code: str, password: str = PASSWORD) -> str:
    """Redeem an enrolment code as the operator would; the TOTP seed they enrolled.

    Confirming claims the current time step; the claim is dropped again so that tests can log in
    "now" with any of the steps -1, 0, 1, as if enrolment had happened a while ago.
    """
    started = components.enrolments.begin(Secret(code), Secret(password), Origin())
    seed = seed_of(started.totp_uri.expose())
    actor = components.enrolments.confirm(Secret(code), Secret(pyotp.TOTP(seed).at(components.operators._clock())),
                                          Origin())
    with components.engine.begin() as conn:
        conn.execute(delete(totp_uses).where(totp_uses.c.operator_id == actor.id))
        RowMacs(components.keys).update(conn, operators, actor.id, {"totp_used_steps": None})
    return seed


def make_operator(components: Components, username: str, role: str, password: str = PASSWORD) -> Operator:
    """Created on the host (active at once) and enrolled with `password`."""
    new = components.operators.create(HOST, username, role, Origin())
    assert new.enrolment is not None
    seed = enrol(components, new.enrolment.code.expose(), password)
    return Operator(id=new.id, username=username, role=role, password=password, seed=seed)


def bearer(components: Components, role: str, name: str | None = None) -> str:
    """A credential for any role: an API key for a machine role, an operator's session for a human one."""
    name = name or f"t-{role}"
    if components.policy.is_machine_role(role):
        return components.clients.create(name, role)[1].expose()
    operator = make_operator(components, name.replace("_", "-").lower(), role)
    code = operator.code(components.operators._clock())
    done = components.operators.login(operator.username, Secret(operator.password), Secret(code), Origin())
    return done.session.token.expose()


def login(client: FlaskClient, operator: Operator, code: str) -> str:
    """A session token over HTTP (asserts the login succeeded)."""
    response = client.post("/v1/auth/login", json={"username": operator.username, "password": operator.password,
                                                   "totp": code})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["session_token"]
    return token
