"""Issue #15's insider attacks, each over HTTP (Flask test client), on SQLite and PostgreSQL.

The insider reads and writes every table but holds no KEK. Each attack must fail closed:
no wider access than before, a stable error code, and an `integrity` audit event (the alert).
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import auth
from vault.storage.schema import audit_events, tokens

VICTIM_PAN = "4000002500003155"
INSIDER_PAN = "4000000000000077"


def _card(pan: str) -> dict[str, Any]:
    return {"kind": "card", "value": {"pan": pan, "exp_month": 7, "exp_year": 2099}, "deterministic": True}


def _integrity_events(parts: Components) -> list[Any]:
    with parts.engine.connect() as conn:
        return list(conn.execute(select(audit_events).where(audit_events.c.action == "integrity")).mappings())


def test_lookup_moved_to_a_victims_row_does_not_return_the_victims_token(
        client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    """Issue: tokenizing the insider's card returned the victim's token, which the gateway detokenized."""
    victim = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"])).get_json()
    mine = client.post("/v1/tokens", json=_card(INSIDER_PAN), headers=auth(api_keys["checkout"])).get_json()
    with components.engine.begin() as conn:
        my_lookup = conn.execute(select(tokens.c.lookup).where(tokens.c.token == mine["token"])).scalar_one()
        conn.execute(update(tokens).where(tokens.c.token == mine["token"]).values(lookup=None))
        conn.execute(update(tokens).where(tokens.c.token == victim["token"]).values(lookup=my_lookup))

    again = client.post("/v1/tokens", json=_card(INSIDER_PAN), headers=auth(api_keys["checkout"]))
    assert again.status_code == 403, again.get_json()
    assert again.get_json()["error"]["code"] == "integrity_failure"
    assert victim["token"] not in again.get_data(as_text=True)
    assert VICTIM_PAN not in again.get_data(as_text=True) and INSIDER_PAN not in again.get_data(as_text=True)
    events = _integrity_events(components)
    assert len(events) == 1 and events[0]["error_code"] == "integrity_failure"

    batch = client.post("/v1/tokens/batch", json={"items": [_card(INSIDER_PAN)]},
                        headers=auth(api_keys["checkout"])).get_json()
    assert batch["results"][0]["error"]["code"] == "integrity_failure"
    # The victim's own deterministic tokenization still finds their token (the moved lookup is not theirs).
    with components.engine.connect() as conn:
        assert conn.execute(select(tokens.c.token).where(tokens.c.lookup == my_lookup)).scalar_one() == victim["token"]


def test_a_lookup_kept_in_place_still_answers(client: FlaskClient, api_keys: dict[str, str]) -> None:
    first = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"])).get_json()
    second = client.post("/v1/tokens", json=_card(VICTIM_PAN), headers=auth(api_keys["checkout"]))
    assert second.status_code in (200, 201) and second.get_json()["token"] == first["token"]
