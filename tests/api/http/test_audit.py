"""Auditors' HTTP endpoints, and the fields every audited endpoint records."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import auth
from tests.support.operators import bearer
from vault.storage.schema import audit_events

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}
REQUIRED = ("seq", "at", "actor", "role", "action", "outcome")
HEADERS = {"User-Agent": "audit-test/1.0", "X-Request-ID": "req-audit-1"}


def auditor_key(components: Components) -> str:
    """An auditor's session (a person, with TOTP): API keys may not carry the auditor role."""
    return bearer(components, "auditor", "auditor-1")


def test_events_filters_and_cursor(client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    for _ in range(5):
        client.post("/v1/tokens", json={"kind": "card", "value": CARD}, headers=auth(api_keys["checkout"]))
    key = auditor_key(components)
    page = client.get("/v1/audit/events?action=tokenize&limit=3", headers=auth(key)).get_json()
    assert len(page["events"]) == 3 and page["next"] is not None
    rest = client.get(f"/v1/audit/events?action=tokenize&limit=3&cursor={page['next']}", headers=auth(key)).get_json()
    assert len(rest["events"]) == 2 and rest["next"] is None
    assert all(e["action"] == "tokenize" and e["outcome"] == "allowed" for e in page["events"] + rest["events"])
    none = client.get("/v1/audit/events?since=2100-01-01T00:00:00Z", headers=auth(key)).get_json()
    assert none["events"] == []


def test_reading_the_trail_is_audited(client: FlaskClient, components: Components) -> None:
    key = auditor_key(components)
    client.get("/v1/audit/events", headers=auth(key))
    page = client.get("/v1/audit/events?action=read_audit", headers=auth(key)).get_json()
    assert page["events"][0]["actor"].startswith("op_") and page["events"][0]["role"] == "auditor"


def test_only_auditors_read_the_trail(client: FlaskClient, api_keys: dict[str, str]) -> None:
    for role in ("checkout", "payment_gateway", "shipping", "support"):
        assert client.get("/v1/audit/events", headers=auth(api_keys[role])).status_code == 403
        assert client.get("/v1/audit/verify", headers=auth(api_keys[role])).status_code == 403
    assert client.get("/v1/audit/events").status_code == 401


def test_bad_query_parameters(client: FlaskClient, components: Components) -> None:
    key = auditor_key(components)
    assert client.get("/v1/audit/events?since=yesterday", headers=auth(key)).status_code == 422
    assert client.get("/v1/audit/events?limit=5000", headers=auth(key)).status_code == 422
    assert client.get("/v1/audit/events?limit=-1", headers=auth(key)).status_code == 422
    assert client.get("/v1/audit/events?colour=red", headers=auth(key)).status_code == 422


def test_verify_endpoint(client: FlaskClient, components: Components, api_keys: dict[str, str]) -> None:
    client.post("/v1/tokens", json={"kind": "card", "value": CARD}, headers=auth(api_keys["checkout"]))
    key = auditor_key(components)
    intact = client.get("/v1/audit/verify", headers=auth(key))
    assert intact.status_code == 200 and intact.get_json()["intact"] is True
    with components.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.action == "tokenize").values(outcome="denied"))
    broken = client.get("/v1/audit/verify", headers=auth(key))
    assert broken.status_code == 409
    assert broken.get_json()["broken"]["reason"] == "event modified"


def test_every_endpoint_emits_all_fields(client: FlaskClient, components: Components,
                                         api_keys: dict[str, str]) -> None:
    """Success and failure of each endpoint write an event with who/what/when/outcome/origin/resource."""
    checkout, gateway = auth(api_keys["checkout"]), auth(api_keys["payment_gateway"])
    token = client.post("/v1/tokens", json={"kind": "card", "value": CARD}, headers={**checkout, **HEADERS}
                        ).get_json()["token"]
    calls = [
        ("tokenize", lambda: client.post("/v1/tokens", json={"kind": "email", "value": "a@example.com"},
                                         headers={**checkout, **HEADERS})),
        ("tokenize", lambda: client.post("/v1/tokens/batch", json={"items": [{"kind": "cvv", "value": "1"}]},
                                         headers={**checkout, **HEADERS})),
        ("detokenize", lambda: client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                                           headers={**gateway, **HEADERS})),
        ("detokenize", lambda: client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"},
                                           headers={**checkout, **HEADERS})),
        ("read_metadata", lambda: client.get(f"/v1/tokens/{token}", headers={**checkout, **HEADERS})),
        ("read_metadata", lambda: client.get("/v1/tokens/0000000000001111", headers={**checkout, **HEADERS})),
        ("delete", lambda: client.delete("/v1/tokens/0000000000001111", headers={**checkout, **HEADERS})),
        ("delete", lambda: client.delete(f"/v1/tokens/{token}", headers={**checkout, **HEADERS})),
        ("authenticate", lambda: client.get(f"/v1/tokens/{token}", headers=HEADERS)),
        ("read_audit", lambda: client.get("/v1/audit/events", headers={**checkout, **HEADERS})),
    ]
    for action, call in calls:
        with components.engine.connect() as conn:
            before = conn.execute(select(audit_events.c.seq).order_by(audit_events.c.seq.desc())).scalar() or 0
        call()
        with components.engine.connect() as conn:
            rows = conn.execute(select(audit_events).where(audit_events.c.seq > before)).mappings().all()
        assert rows, action
        for row in rows:
            assert row["action"] == action
            assert all(row[name] is not None for name in ("at", "actor", "role", "action", "outcome", "writer",
                                                          "chain_seq", "mac"))
            assert row["outcome"] in ("allowed", "denied", "error")
            assert row["outcome"] == "allowed" or row["error_code"]
            assert (row["request_id"], row["source"], row["user_agent"]) == ("req-audit-1", "127.0.0.1",
                                                                             "audit-test/1.0")
            if action in ("tokenize", "detokenize", "read_metadata", "delete") and row["outcome"] == "allowed":
                assert row["token"] and row["kind"]
            if action == "detokenize" and row["outcome"] == "allowed":
                assert row["purpose"] == "payment"  # a role refused outright is refused before the body is read
