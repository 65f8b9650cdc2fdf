"""No oracles, no repeats, and denials an auditor can explain (issue #19, items 7 and 8)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import bearer

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}
BILLING = {"name": "Ann Payer", "line1": "1 Bill St", "city": "Oslo", "country": "NO", "use": "billing"}


@pytest.fixture
def keys(components: Components, api_keys: dict[str, str]) -> dict[str, str]:
    extra = {role: bearer(components, role, f"t-{role}") for role in ("privacy_officer", "auditor", "marketing")}
    return {**api_keys, **extra}


def _token(client: FlaskClient, keys: dict[str, str], kind: str, value: Any, **extra: Any) -> str:
    answer = client.post("/v1/tokens", json={"kind": kind, "value": value, **extra}, headers=auth(keys["checkout"]))
    assert answer.status_code == 201, answer.get_json()
    token: str = answer.get_json()["token"]
    return token


def _detok(client: FlaskClient, key: str, tokens: list[str], purpose: str) -> list[dict[str, Any]]:
    answer = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": purpose}, headers=auth(key))
    assert answer.status_code == 200
    results: list[dict[str, Any]] = answer.get_json()["results"]
    return results


def test_deterministic_tokenize_answers_alike_for_new_and_existing(client: FlaskClient, keys: dict[str, str],
                                                                    clock: Clock) -> None:
    """An existing value's answer used to carry its old created_at: a membership oracle for any guess."""
    body = {"kind": "email", "value": "same@example.net", "deterministic": True, "subject_id": "c-1"}
    assert client.post("/v1/tokens", json=body, headers=auth(keys["checkout"])).status_code == 201
    clock.advance(3600)
    existing = client.post("/v1/tokens", json=body, headers=auth(keys["checkout"]))
    new = client.post("/v1/tokens", json={**body, "value": "other@example.net"}, headers=auth(keys["checkout"]))
    assert (existing.status_code, new.status_code) == (201, 201)

    def shape(answer: dict[str, Any]) -> dict[str, Any]:
        return {"keys": sorted(answer), "metadata": sorted(answer["metadata"]), "expires_at": answer["expires_at"],
                "times": {k: v for k, v in answer["metadata"].items() if k.endswith("_at")}}

    assert shape(existing.get_json()) == shape(new.get_json())
    batch = client.post("/v1/tokens/batch", json={"items": [body, {**body, "value": "third@example.net"}]},
                        headers=auth(keys["checkout"])).get_json()["results"]
    assert shape(batch[0]) == shape(batch[1])


def test_a_cvv_is_returned_once_per_response(client: FlaskClient, keys: dict[str, str]) -> None:
    cvv = _token(client, keys, "cvv", "123")
    results = _detok(client, keys["payment_gateway"], [cvv, cvv, cvv], "payment")
    assert [r.get("value") for r in results] == ["123", None, None]
    assert [r["error"]["code"] for r in results[1:]] == ["not_found", "not_found"]


def test_every_denial_says_why_to_the_auditor_only(client: FlaskClient, components: Components,
                                                   keys: dict[str, str], clock: Clock) -> None:
    card = _token(client, keys, "card", CARD, subject_id="c-2")
    billing = _token(client, keys, "address", BILLING)
    email = _token(client, keys, "email", "ann@example.net", subject_id="c-2")
    short = _token(client, keys, "email", "gone@example.net", ttl_seconds=5)
    cvv = _token(client, keys, "cvv", "999")
    clock.advance(10)
    client.put("/v1/subjects/c-2/consents", json={"marketing": False}, headers=auth(keys["checkout"]))
    cases = [
        (keys["support"], [card], "payment", "wrong_purpose"),
        (keys["shipping"], [card], "fulfillment", "kind_not_allowed"),
        (keys["shipping"], [billing], "fulfillment", "use_not_allowed"),
        (keys["marketing"], [email], "marketing", "opted_out"),
        (keys["support"], [short], "support", "expired"),
        (keys["support"], ["tok_email_" + "Q" * 32], "support", "missing"),
        (keys["support"], ["not a token"], "support", "malformed"),
    ]
    for key, tokens, purpose, _ in cases:
        answer = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": purpose}, headers=auth(key))
        text = answer.get_data(as_text=True)
        for reason in ("wrong_purpose", "kind_not_allowed", "use_not_allowed", "opted_out", "expired", "reason="):
            assert reason not in text
    assert client.put("/v1/subjects/c-2/restriction", json={"restricted": True},
                      headers=auth(keys["privacy_officer"])).status_code == 204
    _detok(client, keys["payment_gateway"], [card], "payment")
    _detok(client, keys["payment_gateway"], [cvv, cvv], "payment")
    events = client.get("/v1/audit/events?action=detokenize&outcome=denied&limit=100",
                        headers=auth(keys["auditor"])).get_json()["events"]
    reasons = [event["detail"] for event in events]
    assert reasons == [f"reason={case[3]}" for case in cases] + ["reason=restricted", "reason=repeated"]
    missing = client.get("/v1/tokens/tok_email_" + "Q" * 32, headers=auth(keys["checkout"]))
    assert missing.status_code == 404 and "reason" not in missing.get_data(as_text=True)
    denied = client.get("/v1/audit/events?action=read_metadata&outcome=denied",
                        headers=auth(keys["auditor"])).get_json()["events"]
    assert denied[-1]["detail"] == "reason=missing"


def test_a_totp_code_is_spent_only_when_its_action_runs(client: FlaskClient, components: Components,
                                                       keys: dict[str, str], clock: Clock) -> None:
    """Issue #19: a step-up whose request then failed (here a 404) used to spend the code: a 30 s wait."""
    from tests.support.operators import login, make_operator

    officer = make_operator(components, "po-spend", "privacy_officer")
    session = auth(login(client, officer, officer.code(clock.now)))
    _token(client, keys, "email", "spent@example.net", subject_id="c-9")
    clock.advance(30)
    stepped = {**session, "X-TOTP": officer.code(clock.now)}
    assert client.delete("/v1/subjects/nobody-here", headers=stepped).status_code == 404
    assert client.delete("/v1/subjects/c-9", headers=stepped).status_code == 200  # the same code, not spent
    replay = client.delete("/v1/subjects/c-9", headers=stepped)
    assert replay.status_code == 401 and replay.get_json()["error"]["code"] == "step_up_required"  # now spent
