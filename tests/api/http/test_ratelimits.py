"""Rate limits in one process (in-memory counters): 429 + Retry-After, an audit alert, per client and role.

The same limits shared by two gunicorn workers through Redis: tests/e2e/test_rate_limit_redis.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from api.http.app import create_app
from api.http.ratelimits import RateLimits
from api.wiring import Components
from tests.conftest import Clock, auth, make_components
from vault.errors import ConfigurationError
from vault.storage.schema import audit_events

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}


@pytest.fixture
def limited(tmp_path: Path, sqlite_url: str, clock: Clock) -> Iterator[tuple[FlaskClient, Components]]:
    parts = make_components(tmp_path / "data", sqlite_url, clock, TOKENVAULT_DETOKENIZE_RATE_LIMIT="2/minute",
                            TOKENVAULT_DETOKENIZE_RATE_LIMIT_SUPPORT="1/minute", TOKENVAULT_RATE_LIMIT="8/minute",
                            TOKENVAULT_LOGIN_RATE_LIMIT="2/minute")
    yield create_app(parts=parts).test_client(), parts
    parts.engine.dispose()


def key(parts: Components, role: str) -> tuple[str, dict[str, str]]:
    client_id, api_key = parts.clients.create(f"rl-{role}", role)
    return client_id, auth(api_key.expose())


def test_detokenize_quota_answers_429_and_is_audited(limited: tuple[FlaskClient, Components]) -> None:
    client, parts = limited
    _, checkout = key(parts, "checkout")
    token = client.post("/v1/tokens", json={"kind": "card", "value": CARD}, headers=checkout).get_json()["token"]
    gateway_id, gateway = key(parts, "payment_gateway")
    body = {"tokens": [token], "purpose": "payment"}
    assert [client.post("/v1/detokenize", json=body, headers=gateway).status_code for _ in range(2)] == [200, 200]
    refused = client.post("/v1/detokenize", json=body, headers=gateway)
    assert refused.status_code == 429
    assert refused.get_json() == {"error": {"code": "rate_limited", "message": "too many requests"}}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert client.get(f"/v1/tokens/{token}", headers=gateway).status_code == 200  # other endpoints still answer
    _, other_gateway = key(parts, "payment_gateway")  # counted per client
    assert client.post("/v1/detokenize", json=body, headers=other_gateway).status_code == 200
    with parts.engine.connect() as conn:
        alerts = conn.execute(select(audit_events.c.actor, audit_events.c.role, audit_events.c.outcome,
                                     audit_events.c.error_code, audit_events.c.detail)
                              .where(audit_events.c.action == "rate_limit")).all()
    assert [tuple(a) for a in alerts] == [(gateway_id, "payment_gateway", "denied", "rate_limited",
                                           "limit=2 per 1 minute scope=v1.detokenize.items items=1")]


def test_detokenize_quota_counts_values_not_requests(limited: tuple[FlaskClient, Components]) -> None:
    """Issue #19: nine batches of 1,000 were nine requests; now a batch spends one unit per token."""
    client, parts = limited
    _, gateway = key(parts, "payment_gateway")  # 2 values a minute
    two = {"tokens": ["tok_email_" + "A" * 32, "tok_email_" + "B" * 32], "purpose": "payment"}
    assert client.post("/v1/detokenize", json=two, headers=gateway).status_code == 200
    refused = client.post("/v1/detokenize", json={**two, "tokens": two["tokens"][:1]}, headers=gateway)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 60
    _, other = key(parts, "payment_gateway")
    three = {**two, "tokens": [*two["tokens"], "tok_email_" + "C" * 32]}
    assert client.post("/v1/detokenize", json=three, headers=other).status_code == 429  # more than the quota


def test_default_policy_caps_support_per_day(client: FlaskClient, components: Components) -> None:
    """Without any setting, support reads at most 60 values a minute and 500 a day; partners 20,000 a day."""
    _, support = key(components, "support")
    batch = {"tokens": [f"tok_email_{index:032d}" for index in range(60)], "purpose": "support"}
    assert client.post("/v1/detokenize", json=batch, headers=support).status_code == 200
    assert client.post("/v1/detokenize", json={**batch, "tokens": batch["tokens"][:1]},
                       headers=support).status_code == 429
    # The counters run on the wall clock (Redis or memory), not the injected one: the day caps as configured.
    assert components.access.detokenize_rate_limit_for("support") == "60/minute;500/day"
    for role in ("shipping", "marketing"):
        assert components.access.detokenize_rate_limit_for(role).endswith("20000/day")


def test_a_role_can_have_its_own_quota(limited: tuple[FlaskClient, Components]) -> None:
    client, parts = limited
    _, support = key(parts, "support")
    body = {"tokens": ["tok_email_" + "A" * 32], "purpose": "support"}
    assert client.post("/v1/detokenize", json=body, headers=support).status_code == 200
    assert client.post("/v1/detokenize", json=body, headers=support).status_code == 429


def test_every_endpoint_counts_towards_the_client_limit(limited: tuple[FlaskClient, Components]) -> None:
    client, parts = limited
    _, checkout = key(parts, "checkout")
    answers = [client.post("/v1/tokens", json={"kind": "email", "value": "a@example.com"}, headers=checkout)
               .status_code for _ in range(9)]
    assert answers == [201] * 8 + [429]
    assert client.get("/healthz").status_code == 200  # outside /v1: not limited


def test_login_attempts_are_limited_per_address(limited: tuple[FlaskClient, Components]) -> None:
    client, _ = limited
    body = {"username": "nobody", "password": "whatever-password", "totp": "123456"}
    answers = [client.post("/v1/auth/login", json=body).status_code for _ in range(3)]
    assert answers == [401, 401, 429]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TOKENVAULT_DETOKENIZE_RATE_LIMIT_INTERN", "1/second", "role 'intern'"),
    ("TOKENVAULT_RATE_LIMIT", "lots", "TOKENVAULT_RATE_LIMIT is not a rate limit"),
    ("TOKENVAULT_ARGON2_TIME_COST", "0", "TOKENVAULT_ARGON2_TIME_COST must be"),
])
def test_bad_settings_refuse_to_start(tmp_path: Path, sqlite_url: str, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_components(tmp_path / "data", sqlite_url, **{name: value})


def test_an_unreachable_redis_falls_back_to_counting_in_memory() -> None:
    """Redis down must neither stop traffic nor lift the limits: each worker counts on its own."""
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    counters = RateLimits(f"redis://127.0.0.1:{port}/0")
    answers = [counters.refused("actor:c1", "all", "2/minute") for _ in range(3)]
    assert answers[:2] == [None, None]
    refused = answers[2]
    assert refused is not None and str(refused[0]) == "2 per 1 minute" and 1 <= refused[1] <= 60
    assert counters.refused("actor:c2", "all", "2/minute") is None  # still per client
