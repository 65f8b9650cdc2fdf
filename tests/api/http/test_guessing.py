"""Guessing card tokens is detected: a client whose detokenize calls keep missing is suspended.

Issue #19: one payment_gateway key tried 7,449 candidates a second and nothing noticed. Now the
misses (counted from the audit trail, so every instance sees them) suspend the client (403
client_suspended, an audit event a SIEM alerts on), and only a second admin can resume it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import Clock, auth, make_components
from tests.support.operators import Operator, bearer, login, make_operator
from vault.tokens.formats import card_token

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}


@pytest.fixture
def setup(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[tuple[FlaskClient, Components]]:
    # No authentication cache: a suspension takes effect on the very next request (else within 2 s).
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_AUTH_CACHE_SECONDS="0")
    yield create_app(parts=parts).test_client(), parts
    parts.trail.close()
    parts.engine.dispose()


def _guesses(count: int) -> list[str]:
    return [card_token("4111111111111111", keep_bin=False) for _ in range(count)]


def _detok(client: FlaskClient, key: str, tokens: list[str]) -> Any:
    return client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "payment"}, headers=auth(key))


def _setup_keys(client: FlaskClient, parts: Components) -> tuple[str, str, str]:
    checkout = parts.clients.create("g-checkout", "checkout")[1].expose()
    gateway_id, gateway = parts.clients.create("g-gateway", "payment_gateway")
    token = client.post("/v1/tokens", json={"kind": "card", "value": CARD},
                        headers=auth(checkout)).get_json()["token"]
    return gateway_id, gateway.expose(), token


def _suspensions(client: FlaskClient, parts: Components) -> list[dict[str, Any]]:
    auditor = bearer(parts, "auditor", f"g-auditor-{secrets.token_hex(4)}")
    events: list[dict[str, Any]] = client.get("/v1/audit/events?action=suspend_client",
                                              headers=auth(auditor)).get_json()["events"]
    return events


def test_a_burst_of_misses_suspends_the_client(setup: tuple[FlaskClient, Components]) -> None:
    client, parts = setup
    gateway_id, gateway, token = _setup_keys(client, parts)
    assert _detok(client, gateway, _guesses(15)).status_code == 200
    assert _detok(client, gateway, [token]).status_code == 200
    assert _detok(client, gateway, _guesses(6)).status_code == 200  # 21 misses in a minute
    refused = _detok(client, gateway, [token])
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "client_suspended"
    assert client.get(f"/v1/tokens/{token}", headers=auth(gateway)).status_code == 403  # every endpoint
    [event] = _suspensions(client, parts)
    assert event["actor"] == gateway_id and event["error_code"] == "guessing_suspected"
    assert event["detail"] == f"client={gateway_id} misses_per_minute=21"


def test_a_patient_guesser_is_caught_by_the_daily_count(setup: tuple[FlaskClient, Components],
                                                        clock: Clock) -> None:
    client, parts = setup
    _, gateway, token = _setup_keys(client, parts)
    statuses = []
    for _ in range(6):  # 19 misses a minute, diluted with 20 real reads: only the daily count trips
        statuses.append(_detok(client, gateway, _guesses(19) + [token] * 20).status_code)
        clock.advance(61)
    assert statuses == [200] * 6
    assert _detok(client, gateway, [token]).status_code == 403
    assert _suspensions(client, parts)[0]["detail"].endswith("misses_per_day=114")


def test_a_client_that_mostly_misses_is_suspended(setup: tuple[FlaskClient, Components], clock: Clock) -> None:
    client, parts = setup
    _, gateway, token = _setup_keys(client, parts)
    for _ in range(3):  # 10 misses and 5 reads a minute: under the per-minute count, over half missing
        assert _detok(client, gateway, _guesses(10) + [token] * 5).status_code == 200
        clock.advance(61)
    assert _detok(client, gateway, [token]).status_code == 403
    assert _suspensions(client, parts)[0]["detail"].endswith("miss_share=30/45")


def test_opaque_token_misses_do_not_count(setup: tuple[FlaskClient, Components]) -> None:
    """192 random bits cannot be guessed: a gateway asking for stale CVVs is not suspended."""
    client, parts = setup
    _, gateway, token = _setup_keys(client, parts)
    stale = [f"tok_cvv_{index:032d}" for index in range(50)]
    assert _detok(client, gateway, stale).status_code == 200
    assert _detok(client, gateway, [token]).status_code == 200


def _admin(client: FlaskClient, parts: Components, clock: Clock, name: str) -> tuple[Operator, str]:
    operator = make_operator(parts, name, "admin")
    return operator, login(client, operator, operator.code(clock.now))


def test_only_a_second_admin_resumes_a_suspended_client(setup: tuple[FlaskClient, Components],
                                                        clock: Clock) -> None:
    client, parts = setup
    gateway_id, gateway, token = _setup_keys(client, parts)
    _detok(client, gateway, _guesses(21))
    assert _detok(client, gateway, [token]).status_code == 403
    (one, one_session), (two, two_session) = (_admin(client, parts, clock, "adm-one"),
                                              _admin(client, parts, clock, "adm-two"))
    clock.advance(30)
    filed = client.post(f"/v1/clients/{gateway_id}/resume",
                        headers={**auth(one_session), "X-TOTP": one.code(clock.now)})
    assert filed.status_code == 202
    approval = filed.get_json()["approval"]["id"]
    assert _detok(client, gateway, [token]).status_code == 403  # still suspended: one admin is not enough
    clock.advance(30)
    own = client.post(f"/v1/approvals/{approval}/approve", headers={**auth(one_session), "X-TOTP": one.code(clock.now)})
    assert own.status_code == 403
    approved = client.post(f"/v1/approvals/{approval}/approve",
                           headers={**auth(two_session), "X-TOTP": two.code(clock.now)})
    assert approved.status_code == 200
    assert _detok(client, gateway, [token]).status_code == 200
    assert _detok(client, gateway, _guesses(5)).status_code == 200  # counted afresh after the resume
    assert _detok(client, gateway, [token]).status_code == 200


def test_metadata_probes_count_as_misses(setup: tuple[FlaskClient, Components]) -> None:
    """A support key could find live card tokens by metadata and hand them to a gateway key that never misses."""
    client, parts = setup
    support_id, support = parts.clients.create("g-support", "support")
    answers = [client.get(f"/v1/tokens/{guess}", headers=auth(support.expose())).status_code
               for guess in _guesses(22)]
    assert answers == [404] * 21 + [403]
    assert _suspensions(client, parts)[0]["actor"] == support_id
