"""No PAN in any clear field: every body field kept or shown unencrypted refuses a card number (422,
never echoed), whatever separators sit between its digits; headers that reach the trail are scrubbed."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from api.wiring import Components
from tests.api.http.test_privacy import CARD, Officer
from tests.conftest import Clock, auth
from tests.support.operators import bearer

DIGITS = "5105105105105100"
SPELLINGS = ["5105105105105100", "5105-1051-0510-5100", "5105.1051.0510.5100", "5105/1051/0510/5100",
             "5105_1051_0510_5100", "5105 1051 0510 5100", "5105105105105100123", "ref-5105.1051.0510.5100-x"]


@pytest.fixture
def keys(components: Components, api_keys: dict[str, str]) -> dict[str, str]:
    extra = {role: bearer(components, role, f"t-{role}") for role in ("privacy_officer", "auditor")}
    return {**api_keys, **extra}


def _refused(answer: Any, spelling: str) -> None:
    assert answer.status_code == 422, (spelling, answer.status_code)
    body = answer.get_data(as_text=True)
    assert spelling not in body and DIGITS not in body and "1051" not in body


def _dump(components: Components) -> str:
    with components.engine.connect() as conn:
        return " ".join(repr(tuple(row)) for table in ("tokens", "audit_events", "holds", "privacy_requests",
                                                       "consents", "disclosures", "subjects")
                        for row in conn.execute(text(f"SELECT * FROM {table}")))


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_token_fields_refuse_a_card_number(client: FlaskClient, components: Components, keys: dict[str, str],
                                           spelling: str) -> None:
    checkout = auth(keys["checkout"])
    reference = spelling.replace(" ", "-").replace("/", "-")  # the reference pattern has no space or slash
    _refused(client.post("/v1/tokens", json={"kind": "card", "value": CARD, "reference": reference},
                         headers=checkout), spelling)
    batch = client.post("/v1/tokens/batch", json={"items": [{"kind": "card", "value": CARD, "reference": reference}]},
                        headers=checkout)
    assert batch.status_code == 200 and batch.get_json()["results"][0]["error"]["code"] == "invalid_input"
    subject = spelling.replace(" ", "-").replace("/", ":")
    _refused(client.post("/v1/tokens", json={"kind": "email", "value": "a@example.net", "subject_id": subject},
                         headers=checkout), spelling)
    assert DIGITS not in _dump(components).replace("-", "").replace(".", "").replace("_", "").replace(":", "")


@pytest.mark.parametrize("spelling", SPELLINGS[1:4])
def test_privacy_fields_refuse_a_card_number(client: FlaskClient, components: Components, keys: dict[str, str],
                                             clock: Clock, spelling: str) -> None:
    officer = auth(keys["privacy_officer"])
    client.post("/v1/tokens", json={"kind": "email", "value": "a@example.net", "subject_id": "cust-7"},
                headers=auth(keys["checkout"]))
    _refused(client.post("/v1/subjects/cust-7/holds", json={"reason": f"card {spelling} stolen",
                                                             "until": "2099-01-01T00:00:00Z"}, headers=officer),
             spelling)
    _refused(client.put("/v1/subjects/cust-7/consents", json={"marketing": False, "source": f"call {spelling}"},
                        headers=auth(keys["checkout"])), spelling)
    made = client.post("/v1/subjects/cust-7/requests", json={"right": "erasure"}, headers=officer).get_json()
    _refused(client.post(f"/v1/privacy/requests/{made['id']}/close", json={"outcome": f"card {spelling}"},
                         headers=officer), spelling)
    one = Officer(client, components, clock, "po-clear")
    body = {"subject_id": "cust-7", "case_reference": "CR-1", "authority": "Court", "justification": "order"}
    for field in ("case_reference", "authority", "justification"):
        _refused(client.post("/v1/disclosures", json={**body, field: f"x {spelling}"}, headers=one.stepped()),
                 spelling)
    _refused(client.get(f"/v1/audit/events?actor={spelling.replace('/', '.')}", headers=auth(keys["auditor"])),
             spelling)
    flat = _dump(components).replace("-", "").replace(".", "").replace("/", "")
    assert DIGITS not in flat


def test_request_id_and_user_agent_never_carry_a_card_number(client: FlaskClient, components: Components,
                                                            keys: dict[str, str]) -> None:
    answer = client.post("/v1/tokens", json={"kind": "email", "value": "a@example.net"},
                         headers={**auth(keys["checkout"]), "X-Request-ID": "5105.1051.0510.5100",
                                  "User-Agent": "shop/1.0 (card 5105-1051-0510-5100)"})
    assert answer.status_code == 201
    assert "1051" not in answer.headers["X-Request-ID"]
    events = client.get("/v1/audit/events?action=tokenize", headers=auth(keys["auditor"])).get_json()["events"]
    shown = repr(events[-1]["origin"])
    assert "1051" not in shown and "[redacted-pan]" in shown
    assert "1051" not in _dump(components)
