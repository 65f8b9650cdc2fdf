"""Legal holds are absolute: nothing deletes, expires, purges or overwrites a held subject's data.

Every path is tried over HTTP (or as the workers run it) by each role that could take it;
lifting a hold needs a second privacy officer.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from api.wiring import Components
from tests.api.http.test_privacy import CARD, PAN, Officer
from tests.conftest import Clock, auth
from tests.support.operators import bearer
from vault.audit.trail import Actor

CRON = Actor(id="cron", role="system")


@pytest.fixture
def officers(client: FlaskClient, components: Components, clock: Clock) -> tuple[Officer, Officer]:
    return Officer(client, components, clock, "hold-one"), Officer(client, components, clock, "hold-two")


@pytest.fixture
def keys(components: Components, api_keys: dict[str, str]) -> dict[str, str]:
    return {**api_keys, "privacy_officer": bearer(components, "privacy_officer", "t-po")}


def _tokenize(client: FlaskClient, keys: dict[str, str], subject: str, **extra: Any) -> str:
    answer = client.post("/v1/tokens", json={"kind": "card", "value": CARD, "subject_id": subject, **extra},
                         headers=auth(keys["checkout"]))
    assert answer.status_code == 201, answer.get_json()
    token: str = answer.get_json()["token"]
    return token


def _hold(client: FlaskClient, keys: dict[str, str], subject: str) -> str:
    made = client.post(f"/v1/subjects/{subject}/holds", json={"reason": "case 2026-17",
                                                               "until": "2099-01-01T00:00:00Z"},
                       headers=auth(keys["privacy_officer"]))
    assert made.status_code == 201
    hold_id: str = made.get_json()["id"]
    return hold_id


def _pan(client: FlaskClient, keys: dict[str, str], token: str) -> Any:
    answer = client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                         headers=auth(keys["payment_gateway"])).get_json()["results"][0]
    return answer.get("value", {}).get("pan")


def _code(response: Any) -> str:
    code: str = response.get_json()["error"]["code"]
    return code


def test_no_role_deletes_a_held_token(client: FlaskClient, keys: dict[str, str]) -> None:
    held = _tokenize(client, keys, "held-1")
    free = _tokenize(client, keys, "free-1")
    _hold(client, keys, "held-1")
    for role in ("checkout", "privacy_officer"):
        refused = client.delete(f"/v1/tokens/{held}", headers=auth(keys[role]))
        assert refused.status_code == 409 and _code(refused) == "legal_hold", role
    assert _pan(client, keys, held) == PAN
    assert client.delete(f"/v1/tokens/{free}", headers=auth(keys["checkout"])).status_code == 204


def test_correction_of_a_held_value_is_refused(client: FlaskClient, keys: dict[str, str],
                                               officers: tuple[Officer, Officer]) -> None:
    held = _tokenize(client, keys, "held-2")
    _hold(client, keys, "held-2")
    refused = client.patch(f"/v1/tokens/{held}", json={"value": {**CARD, "holder": "Someone Else"}},
                           headers=officers[0].stepped())
    assert refused.status_code == 409 and _code(refused) == "legal_hold"
    assert client.get(f"/v1/tokens/{held}", headers=auth(keys["checkout"])).status_code == 200


def test_erasure_and_minor_erasure_answer_legal_hold(client: FlaskClient, keys: dict[str, str],
                                                     officers: tuple[Officer, Officer]) -> None:
    held = _tokenize(client, keys, "held-3")
    _hold(client, keys, "held-3")
    for path in ("/v1/subjects/held-3", "/v1/subjects/held-3/minor"):
        method = client.delete if path.endswith("held-3") else client.post
        refused = method(path, headers=officers[0].stepped())
        assert refused.status_code == 409 and _code(refused) == "legal_hold", path
    assert _pan(client, keys, held) == PAN


def test_ttl_expiry_skips_held_tokens_and_counts_them(client: FlaskClient, components: Components,
                                                      keys: dict[str, str], clock: Clock) -> None:
    held = _tokenize(client, keys, "held-4", ttl_seconds=60)
    free = _tokenize(client, keys, "free-4", ttl_seconds=60)
    _hold(client, keys, "held-4")
    clock.advance(120)
    assert components.tokens.purge_expired() == 1
    events = client.get("/v1/audit/events?action=purge", headers=auth(_auditor(components))).get_json()["events"]
    assert events[-1]["detail"] == "purged=1 held=1"
    assert _pan(client, keys, free) is None
    from sqlalchemy import select

    from vault.storage.schema import tokens

    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == held)).first() is not None


def test_retention_purge_skips_and_counts_held(client: FlaskClient, components: Components,
                                               keys: dict[str, str], clock: Clock) -> None:
    held = _tokenize(client, keys, "held-5")
    _tokenize(client, keys, "free-5")
    _hold(client, keys, "held-5")
    clock.advance(400 * 86400)  # past the 13-month card rule
    counts = components.retention.purge(CRON)
    assert counts["unused_card"] == 1 and counts["held_skipped"] == 1
    assert _pan(client, keys, held) == PAN


def test_releasing_a_hold_needs_a_second_officer(client: FlaskClient, keys: dict[str, str],
                                                 officers: tuple[Officer, Officer]) -> None:
    one, two = officers
    held = _tokenize(client, keys, "held-6")
    hold_id = _hold(client, keys, "held-6")
    path = f"/v1/subjects/held-6/holds/{hold_id}"
    assert client.delete(path, headers=auth(keys["privacy_officer"])).status_code in (401, 403)  # no step-up
    assert client.delete(path, headers=one.plain()).status_code == 401
    filed = client.delete(path, headers=one.stepped())
    assert filed.status_code == 202
    approval = filed.get_json()["approval"]
    assert approval["action"] == "release_hold" and approval["status"] == "pending"
    # Still held: one officer alone cannot lift it and then erase.
    assert _code(client.delete("/v1/subjects/held-6", headers=one.stepped())) == "legal_hold"
    own = client.post(f"/v1/approvals/{approval['id']}/approve", headers=one.stepped())
    assert own.status_code == 403
    assert client.delete(f"/v1/tokens/{held}", headers=auth(keys["checkout"])).status_code == 409
    approved = client.post(f"/v1/approvals/{approval['id']}/approve", headers=two.stepped())
    assert approved.status_code == 200 and approved.get_json()["result"] == {"released": hold_id}
    assert client.delete("/v1/subjects/held-6", headers=one.stepped()).status_code == 200
    unknown = client.delete("/v1/subjects/held-6/holds/hold_0000000000000000", headers=one.stepped())
    assert unknown.status_code == 404


def _auditor(components: Components) -> str:
    return bearer(components, "auditor", "t-auditor")


def test_a_cvv_is_never_held(client: FlaskClient, components: Components, keys: dict[str, str],
                             clock: Clock) -> None:
    """PCI DSS 3.3.1 wins over a hold: a held subject's CVV still expires and is still read once."""
    expiring = client.post("/v1/tokens", json={"kind": "cvv", "value": "123", "subject_id": "held-7",
                                               "ttl_seconds": 60}, headers=auth(keys["checkout"])).get_json()["token"]
    read = client.post("/v1/tokens", json={"kind": "cvv", "value": "456", "subject_id": "held-7"},
                       headers=auth(keys["checkout"])).get_json()["token"]
    _hold(client, keys, "held-7")
    gateway = auth(keys["payment_gateway"])
    first = client.post("/v1/detokenize", json={"tokens": [read], "purpose": "payment"}, headers=gateway)
    again = client.post("/v1/detokenize", json={"tokens": [read], "purpose": "payment"}, headers=gateway)
    assert first.get_json()["results"][0]["value"] == "456"
    assert again.get_json()["results"][0]["error"]["code"] == "not_found"
    clock.advance(120)
    assert components.tokens.purge_expired() == 1
    from sqlalchemy import select

    from vault.storage.schema import tokens

    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.token == expiring)).first() is None
