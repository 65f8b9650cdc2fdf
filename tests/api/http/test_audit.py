"""Auditors' HTTP endpoints, and the fields every audited endpoint records."""

from __future__ import annotations

import json
import time
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import delete, select, update

from api.http.app import create_app
from api.wiring import Components, build
from tests.conftest import auth
from tests.support.operators import bearer
from vault.storage.schema import audit_events, audit_verify_jobs, domain_keys

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
    intact = verified(client, key)
    assert intact.status_code == 200 and intact.get_json()["intact"] is True
    again = client.get("/v1/audit/verify", headers=auth(key))  # the fresh report, at once
    assert again.status_code == 200 and again.get_json()["job"]["job_id"] == intact.get_json()["job"]["job_id"]
    with components.engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.action == "tokenize").values(outcome="denied"))
        conn.execute(delete(audit_verify_jobs))  # no fresh report: the next call starts a job
    broken = verified(client, key)
    assert broken.status_code == 409
    assert broken.get_json()["broken"]["reason"] == "event modified"


def verified(client: FlaskClient, key: str) -> Any:
    """GET /v1/audit/verify: 202 and a job at once, then poll the job until it answers."""
    started = time.monotonic()
    first = client.get("/v1/audit/verify", headers=auth(key))
    assert time.monotonic() - started < 1.0
    if first.status_code != 202:
        return first
    location = first.headers["Location"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        answer = client.get(location, headers=auth(key))
        if answer.status_code != 202:
            return answer
        time.sleep(0.05)
    raise AssertionError("verification job did not finish")


def test_a_corrupted_audit_key_answers_409_with_the_reason(client: FlaskClient, components: Components) -> None:
    key = auditor_key(components)
    with components.engine.begin() as conn:
        conn.execute(update(domain_keys).where(domain_keys.c.purpose == "audit").values(wrapped="local:v1:AAAA"))
    fresh = build(components.settings)  # a worker started after the edit: nothing cached
    try:
        # Over HTTP the auditor is refused too: their session's facts (vault.audit.facts) cannot be checked
        # without the audit key, and an unchecked fact never counts. The host's verify names the reason.
        answer = create_app(parts=fresh).test_client().get("/v1/audit/verify", headers=auth(key))
        assert answer.status_code == 403 and answer.get_json()["error"]["code"] == "integrity_failure"
        report = fresh.audit_log.verify_now()
    finally:
        fresh.trail.close()
        fresh.engine.dispose()
    assert report.broken is not None and report.broken.reason == "audit key unreadable"


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
        if action == "authenticate":  # failures are counted, then written once per source and window
            components.trail.flush_failures(force=True)
        with components.engine.connect() as conn:
            rows = conn.execute(select(audit_events).where(audit_events.c.seq > before)).mappings().all()
        assert rows, action
        for row in rows:
            assert row["action"] == action
            assert all(row[name] is not None for name in ("at", "actor", "role", "action", "outcome", "writer",
                                                          "chain_seq", "mac"))
            assert row["outcome"] in ("allowed", "denied", "error")
            assert row["outcome"] == "allowed" or row["error_code"]
            if action == "authenticate":
                assert row["source"] == "127.0.0.1" and row["detail"].startswith("count=1 ")
                continue
            assert (row["request_id"], row["source"], row["user_agent"]) == ("req-audit-1", "127.0.0.1",
                                                                             "audit-test/1.0")
            if action in ("tokenize", "detokenize", "read_metadata", "delete") and row["outcome"] == "allowed":
                assert row["token"] and row["kind"]
            if action == "detokenize" and row["outcome"] == "allowed":
                assert row["purpose"] == "payment"  # a role refused outright is refused before the body is read


def test_a_forged_stored_report_is_never_served(client: FlaskClient, components: Components) -> None:
    """The insider rewrites the latest report to `intact` and keeps it fresh: it is not served."""
    key = auditor_key(components)
    assert verified(client, key).status_code == 200
    with components.engine.begin() as conn:
        conn.execute(update(audit_events).values(detail="rewritten"))
        forged = {"intact": True, "anchored": True, "events": 1, "broken": None}
        conn.execute(update(audit_verify_jobs).values(  # no resume point either: the next run is a full one
            resume=None, result=json.dumps({"key_id": "k", "report": json.dumps(forged), "mac": "00"})))
    first = client.get("/v1/audit/verify", headers=auth(key))
    # Not the forged report: every event was rewritten, the auditor's own facts too, so the session is refused
    # (an unchecked fact never counts); the host's verify finds the break.
    assert first.status_code == 403 and first.get_json()["error"]["code"] == "integrity_failure"
    assert components.audit_log.verify_now().broken is not None
