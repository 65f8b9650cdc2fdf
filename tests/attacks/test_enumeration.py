"""Token guessing over HTTP: no existence oracle in bodies, headers or timing (SQLite and PostgreSQL).

A token the caller may not read must answer exactly like one that does not exist: the same
body (byte for byte, once the token itself is set aside), the same headers but X-Request-ID,
and about the same time (medians of alternating requests within a factor of two: loose on
purpose, it catches a decryption or a second query on one path only, not noise).
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from api.http.app import create_app
from api.wiring import Components
from tests.attacks.support import CARD, CVV, EMAIL, UNLIMITED, api_keys_for
from tests.conftest import Clock, auth, make_components
from vault.storage.schema import audit_events
from vault.tokens.cards import luhn_valid

GUESSES = 60
TIMING_ROUNDS = 200


@pytest.fixture
def target(tmp_path: Path, database_url: str, clock: Clock) -> Iterator[tuple[Components, FlaskClient,
                                                                             dict[str, str]]]:
    parts = make_components(tmp_path / "data", database_url, clock, **UNLIMITED)
    client = create_app(parts=parts).test_client()
    yield parts, client, api_keys_for(parts)
    parts.engine.dispose()


def card_shaped(length: int) -> str:
    """Random digits that fail the Luhn check, like every real card token."""
    while True:
        guess = "".join(secrets.choice("0123456789") for _ in range(length))
        if not luhn_valid(guess):
            return guess


def opaque_shaped(kind: str) -> str:
    return f"tok_{kind}_{secrets.token_urlsafe(24)}"


def headers_of(response: TestResponse) -> list[tuple[str, str]]:
    return sorted((name, value) for name, value in response.headers.items() if name.lower() != "x-request-id")


def tokenize(client: FlaskClient, key: str, kind: str, value: Any) -> str:
    response = client.post("/v1/tokens", json={"kind": kind, "value": value}, headers=auth(key))
    assert response.status_code == 201, response.data
    token: str = response.get_json()["token"]
    return token


def detokenize(client: FlaskClient, key: str, token: str, purpose: str) -> TestResponse:
    return client.post("/v1/detokenize", json={"tokens": [token], "purpose": purpose}, headers=auth(key))


def assert_same_answer(reference: TestResponse, reference_token: str, other: TestResponse, other_token: str) -> None:
    assert other.status_code == reference.status_code
    assert other.get_data().replace(other_token.encode(), b"<t>") == \
        reference.get_data().replace(reference_token.encode(), b"<t>")
    assert headers_of(other) == headers_of(reference)


def test_guessed_tokens_answer_like_forbidden_ones(target: tuple[Components, FlaskClient, dict[str, str]]) -> None:
    parts, client, keys = target
    card = tokenize(client, keys["checkout"], "card", CARD)
    cvv = tokenize(client, keys["checkout"], "cvv", CVV)
    email = tokenize(client, keys["checkout"], "email", EMAIL)

    # Detokenize: shipping may never read cards or CVVs; support may not read CVVs.
    for key, purpose, real, guess in (
        (keys["shipping"], "fulfillment", card, lambda: card_shaped(len(card))),
        (keys["shipping"], "fulfillment", cvv, lambda: opaque_shaped("cvv")),
        (keys["support"], "support", cvv, lambda: opaque_shaped("cvv")),
        (keys["payment_gateway"], "payment", email, lambda: opaque_shaped("email")),
    ):
        forbidden = detokenize(client, key, real, purpose)
        assert forbidden.status_code == 200
        assert forbidden.get_json()["results"][0]["error"]["code"] == "not_found"
        for _ in range(GUESSES // 4):
            token = guess()
            assert_same_answer(forbidden, real, detokenize(client, key, token, purpose), token)

    # Metadata: the gateway may read card metadata only.
    for real, guess in ((email, lambda: opaque_shaped("email")), (cvv, lambda: opaque_shaped("cvv"))):
        forbidden = client.get(f"/v1/tokens/{real}", headers=auth(keys["payment_gateway"]))
        assert forbidden.status_code == 404 and forbidden.get_json()["error"]["code"] == "not_found"
        for _ in range(GUESSES // 4):
            token = guess()
            missing = client.get(f"/v1/tokens/{token}", headers=auth(keys["payment_gateway"]))
            assert_same_answer(forbidden, real, missing, token)

    # A guessed card token of another shape (length, kind) is still just "not found".
    for length in (13, 15, 19):
        token = card_shaped(length)
        missing = client.get(f"/v1/tokens/{token}", headers=auth(keys["support"]))
        assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"

    # And the guesses are all in the trail, as denials.
    with parts.engine.connect() as conn:
        denied = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.outcome == "denied", audit_events.c.error_code == "not_found")).scalar_one()
    assert denied >= GUESSES


def _timed(send: Callable[[], TestResponse], expected: int) -> Callable[[], float]:
    def once() -> float:
        started = time.perf_counter()
        response = send()
        elapsed = time.perf_counter() - started
        assert response.status_code == expected
        return elapsed * 1000

    return once


def _compare_timing(existing: Callable[[], float], missing: Callable[[], float]) -> tuple[float, float]:
    for _ in range(10):  # warm caches (keys, statements) on both paths
        existing()
        missing()
    a, b = [], []
    for round_ in range(TIMING_ROUNDS):
        first, second = (existing, missing) if round_ % 2 == 0 else (missing, existing)
        (a if first is existing else b).append(first())
        (b if second is missing else a).append(second())
    return statistics.median(a), statistics.median(b)


def test_forbidden_and_missing_tokens_take_about_the_same_time(
    target: tuple[Components, FlaskClient, dict[str, str]],
) -> None:
    _, client, keys = target
    card = tokenize(client, keys["checkout"], "card", CARD)
    email = tokenize(client, keys["checkout"], "email", EMAIL)
    guess_card, guess_email = card_shaped(len(card)), opaque_shaped("email")

    detok_existing, detok_missing = _compare_timing(
        _timed(lambda: detokenize(client, keys["shipping"], card, "fulfillment"), 200),
        _timed(lambda: detokenize(client, keys["shipping"], guess_card, "fulfillment"), 200),
    )
    meta_existing, meta_missing = _compare_timing(
        _timed(lambda: client.get(f"/v1/tokens/{email}", headers=auth(keys["payment_gateway"])), 404),
        _timed(lambda: client.get(f"/v1/tokens/{guess_email}", headers=auth(keys["payment_gateway"])), 404),
    )
    for name, existing, missing in (("detokenize", detok_existing, detok_missing),
                                    ("metadata", meta_existing, meta_missing)):
        ratio = existing / missing
        print(f"{name}: forbidden {existing:.3f} ms, missing {missing:.3f} ms, ratio {ratio:.2f}")
        assert 0.5 <= ratio <= 2.0, f"{name}: forbidden {existing:.3f} ms vs missing {missing:.3f} ms"


def test_guessing_is_rate_limited_and_alerted(tmp_path: Path, database_url: str, clock: Clock) -> None:
    parts = make_components(tmp_path / "data", database_url, clock,
                            TOKENVAULT_DETOKENIZE_RATE_LIMIT_SHIPPING="10/minute")
    try:
        client = create_app(parts=parts).test_client()
        keys = api_keys_for(parts, ("checkout", "shipping"))
        statuses = []
        for _ in range(25):
            response = detokenize(client, keys["shipping"], opaque_shaped("address"), "fulfillment")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.get_json()["error"]["code"] == "rate_limited"
                assert int(response.headers["Retry-After"]) >= 1
        assert statuses[:10] == [200] * 10
        assert statuses[10:] == [429] * 15
        # Other roles keep their own budget; checkout still works.
        assert tokenize(client, keys["checkout"], "email", EMAIL)
        with parts.engine.connect() as conn:
            alerts = conn.execute(select(func.count()).select_from(audit_events).where(
                audit_events.c.action == "rate_limit", audit_events.c.outcome == "denied")).scalar_one()
        assert alerts == 15
    finally:
        parts.engine.dispose()
