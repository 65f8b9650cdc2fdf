"""Operators for tests: create one, compute its TOTP codes at the injected clock's time, log in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qs, urlparse

import pyotp
from flask.testing import FlaskClient

from api.wiring import Components
from vault.access.totp import STEP_SECONDS
from vault.audit.trail import HOST, Origin
from vault.secret import Secret

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


def make_operator(components: Components, username: str, role: str, password: str = PASSWORD) -> Operator:
    new = components.operators.create(HOST, username, role, Origin(), password=Secret(password))
    return Operator(id=new.id, username=username, role=role, password=password, seed=seed_of(new.totp_uri.expose()))


def login(client: FlaskClient, operator: Operator, code: str) -> str:
    """A session token over HTTP (asserts the login succeeded)."""
    response = client.post("/v1/auth/login", json={"username": operator.username, "password": operator.password,
                                                   "totp": code})
    assert response.status_code == 200, response.get_json()
    token: str = response.get_json()["session_token"]
    return token
