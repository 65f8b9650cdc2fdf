"""The authorization matrix, generated from the shipped policy: every role x endpoint x kind x purpose, over HTTP.

The expected answer comes from the policy file's rules read here with tomllib, not from
vault.policy, so a bug in the policy engine cannot hide behind itself. Machine roles
call with API keys; operator roles (admin, auditor, privacy_officer) log in with a
password and TOTP and call with their session token.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import Clock, auth
from tests.support.operators import bearer, login, make_operator
from vault.access.operators import OPERATOR_ROLES
from vault.errors import ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.storage.schema import audit_events, clients

POLICY: dict[str, Any] = tomllib.loads(resources.files("vault.access").joinpath("policy.toml").read_text())
ROLES = tuple(POLICY["roles"])
PURPOSES = ("payment", "fulfillment", "support", "marketing", "legal")
CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}
ADDRESS = {"name": "Jane Doe", "line1": "1 Main St", "city": "Springfield", "country": "US"}
# (label, kind, value, address use): every kind, and both uses of an address.
SAMPLES = (
    ("card", "card", CARD, None),
    ("cvv", "cvv", "123", None),
    ("address/shipping", "address", {**ADDRESS, "use": "shipping"}, "shipping"),
    ("address/billing", "address", {**ADDRESS, "use": "billing"}, "billing"),
    ("email", "email", "jane@example.com", None),
    ("phone", "phone", "+14155552671", None),
    ("name", "name", "Jane Doe", None),
    ("text", "text", "a note", None),
)


def rules(role: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = POLICY["roles"][role].get("rules", [])
    return found


def grants(role: str, operation: str) -> bool:
    """Whether the role may use the endpoint at all (else 403)."""
    return any(operation in rule["operations"] for rule in rules(role))


def allows(role: str, operation: str, kind: str, purpose: str | None = None, use: str | None = None) -> bool:
    for rule in rules(role):
        if (operation in rule["operations"] and kind in rule.get("kinds", [])
                and (not rule.get("purposes") or purpose in rule["purposes"])
                and (not rule.get("uses") or use in rule["uses"])):
            return True
    return False


def view_of(role: str, kind: str, purpose: str) -> dict[str, Any]:
    return next(rule for rule in rules(role) if "detokenize" in rule["operations"] and kind in rule["kinds"]
                and purpose in rule["purposes"])


def credentials(client: FlaskClient, components: Components, clock: Clock, role: str) -> dict[str, str]:
    if role in OPERATOR_ROLES:
        operator = make_operator(components, f"op-{role.replace('_', '-')}", role)
        return auth(login(client, operator, operator.code(clock.now)))
    return auth(components.clients.create(f"matrix-{role}", role)[1].expose())


def tokenize_all(client: FlaskClient, checkout: dict[str, str]) -> dict[str, str]:
    items = [{"kind": kind, "value": value} for _, kind, value, _ in SAMPLES]
    answer = client.post("/v1/tokens/batch", json={"items": items}, headers=checkout).get_json()
    return {label: result["token"] for (label, *_), result in zip(SAMPLES, answer["results"], strict=True)}


def test_the_matrix_covers_every_default_role() -> None:
    assert set(ROLES) == {"checkout", "payment_gateway", "shipping", "support", "marketing", "audit_export",
                          "privacy_officer", "admin", "auditor"}
    # Every role is either a machine's (API key) or a human's (operator session with TOTP), never both.
    machines = {role for role in ROLES if POLICY["roles"][role].get("machine")}
    assert machines == {"checkout", "payment_gateway", "shipping", "support", "marketing", "audit_export"}
    assert set(ROLES) - machines == set(OPERATOR_ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_authorization_matrix(client: FlaskClient, components: Components, clock: Clock, role: str) -> None:
    checkout = auth(components.clients.create("matrix-checkout-source", "checkout")[1].expose())
    headers = credentials(client, components, clock, role)
    mismatches: list[str] = []

    def check(case: str, got: object, want: object) -> None:
        if got != want:
            mismatches.append(f"{role} {case}: got {got}, want {want}")

    # Tokenize: one request per kind.
    for label, kind, value, _use in SAMPLES:
        status = client.post("/v1/tokens", json={"kind": kind, "value": value}, headers=headers).status_code
        check(f"tokenize {label}", status, 201 if allows(role, "tokenize", kind) else 403)

    # Detokenize: every kind under every purpose, on fresh tokens (a CVV is read once).
    for purpose in PURPOSES:
        tokens = tokenize_all(client, checkout)
        response = client.post("/v1/detokenize", json={"tokens": list(tokens.values()), "purpose": purpose},
                               headers=headers)
        if not grants(role, "detokenize"):
            check(f"detokenize ({purpose})", response.status_code, 403)
            continue
        check(f"detokenize ({purpose})", response.status_code, 200)
        results = response.get_json()["results"]
        for (label, kind, value, use), result in zip(SAMPLES, results, strict=True):
            want = allows(role, "detokenize", kind, purpose, use)
            check(f"detokenize {label} for {purpose}", "value" in result, want)
            if not want:
                check(f"detokenize {label} for {purpose} error", result.get("error", {}).get("code"), "not_found")
                continue
            rule = view_of(role, kind, purpose)
            if rule.get("view") == "masked" and kind == "card":
                check(f"masked {label}", result["value"]["pan"].endswith("1111") and CARD["pan"] not in str(result),
                      True)
            if rule.get("fields"):
                check(f"fields of {label}", set(result["value"]) <= set(rule["fields"]), True)
            if rule.get("view", "plain") == "plain" and not rule.get("fields"):
                check(f"plain {label}", result["value"] == value or kind in ("email", "phone", "card"), True)

    # Metadata, then delete, one token of each kind.
    for operation, method, ok in (("read_metadata", client.get, 200), ("delete", client.delete, 204)):
        tokens = tokenize_all(client, checkout)
        for label, kind, _value, _use in SAMPLES:
            status = method(f"/v1/tokens/{tokens[label]}", headers=headers).status_code
            want = (ok if allows(role, operation, kind) else 404) if grants(role, operation) else 403
            check(f"{operation} {label}", status, want)

    # Vault-wide endpoints.
    check("GET /v1/audit/events", client.get("/v1/audit/events", headers=headers).status_code,
          200 if grants(role, "read_audit") else 403)
    check("GET /v1/operators", client.get("/v1/operators", headers=headers).status_code,
          200 if grants(role, "manage_operators") else 403)
    # Approvals are listed to roles that may approve some registered action: operator changes and key
    # retirement (manage_operators, manage_keys) and business transfers (export).
    check("GET /v1/approvals", client.get("/v1/approvals", headers=headers).status_code,
          200 if any(grants(role, op) for op in ("manage_operators", "manage_keys", "export")) else 403)
    assert mismatches == []


def test_named_cases(client: FlaskClient, components: Components, clock: Clock) -> None:
    """The cases the issue names, spelled out: what the generated matrix must agree with."""
    checkout = auth(components.clients.create("checkout", "checkout")[1].expose())
    tokens = tokenize_all(client, checkout)
    shipping = auth(components.clients.create("shipper", "shipping")[1].expose())
    answer = client.post("/v1/detokenize", json={"tokens": [tokens["card"], tokens["address/billing"],
                                                            tokens["address/shipping"]], "purpose": "fulfillment"},
                         headers=shipping).get_json()["results"]
    assert [r.get("error", {}).get("code") for r in answer] == ["not_found", "not_found", None]
    assert "use" not in answer[2]["value"] and answer[2]["value"]["line1"] == "1 Main St"
    detokenize = {"tokens": [tokens["card"]], "purpose": "payment"}
    assert client.post("/v1/detokenize", json=detokenize, headers=checkout).status_code == 403
    admin = make_operator(components, "root", "admin")
    admin_session = auth(login(client, admin, admin.code(clock.now)))
    for purpose in PURPOSES:
        refused = client.post("/v1/detokenize", json={**detokenize, "purpose": purpose}, headers=admin_session)
        assert refused.status_code == 403
    auditor = make_operator(components, "watcher", "auditor")
    auditor_session = auth(login(client, auditor, auditor.code(clock.now)))
    assert client.post("/v1/detokenize", json=detokenize, headers=auditor_session).status_code == 403
    assert client.get("/v1/audit/events", headers=auditor_session).status_code == 200


@pytest.mark.parametrize("role", OPERATOR_ROLES)
def test_an_api_key_of_a_human_role_is_refused(client: FlaskClient, components: Components, role: str) -> None:
    """The issue's attack: a privacy_officer (or admin, auditor) API key skipped MFA. None can be made, and one
    made by an older version stops working: 401 with a stable code, audited under the client's id."""
    with pytest.raises(ValidationFailed):
        components.clients.create(f"{role}-key", role)
    client_id, key = components.clients.create(f"legacy-{role}", "support")
    with components.engine.begin() as conn:
        conn.execute(update(clients).where(clients.c.id == client_id).values(role=role))
        RowMacs(components.keys).backfill(conn, only_missing=False)  # such rows are sealed by `init` (#15)
    token = tokenize_all(client, auth(components.clients.create("checkout", "checkout")[1].expose()))["card"]
    for method, path, body in (("get", "/v1/audit/events", None), ("post", "/v1/detokenize",
                                                                    {"tokens": [token], "purpose": "legal"}),
                               ("get", "/v1/subjects/s1/export", None), ("get", "/v1/operators", None)):
        response = getattr(client, method)(path, json=body, headers=auth(key.expose()))
        assert response.status_code == 401, path
        assert response.get_json()["error"]["code"] == "api_key_role_not_allowed"
        assert "4111" not in response.get_data(as_text=True)
    with components.engine.connect() as conn:
        refused = conn.execute(select(audit_events.c.actor).where(
            audit_events.c.action == "authenticate", audit_events.c.error_code == "api_key_role_not_allowed")).all()
    assert [row.actor for row in refused] == [client_id] * 4


def test_the_siem_export_key_reads_the_audit_trail_and_nothing_else(client: FlaskClient,
                                                                    components: Components) -> None:
    siem = auth(components.clients.create("siem", "audit_export")[1].expose())
    assert client.get("/v1/audit/events", headers=siem).status_code == 200
    assert client.get("/v1/audit/verify", headers=siem).status_code == 202  # allowed: a verification job starts
    token = tokenize_all(client, auth(components.clients.create("checkout", "checkout")[1].expose()))["card"]
    assert client.get(f"/v1/tokens/{token}", headers=siem).status_code == 403
    assert client.post("/v1/detokenize", json={"tokens": [token], "purpose": "payment"}, headers=siem
                       ).status_code == 403
    assert client.get("/v1/operators", headers=siem).status_code == 403


def test_expired_and_revoked_credentials(client: FlaskClient, components: Components, clock: Clock) -> None:
    support_id, support_key = components.clients.create("support-desk", "support")
    token = tokenize_all(client, auth(components.clients.create("checkout", "checkout")[1].expose()))["card"]
    path = f"/v1/tokens/{token}"
    assert client.get(path, headers=auth(support_key.expose())).status_code == 200
    components.clients.revoke(support_id)
    assert client.get(path, headers=auth(support_key.expose())).status_code == 401
    officer = make_operator(components, "olivia", "privacy_officer")
    session = auth(login(client, officer, officer.code(clock.now)))
    assert client.get(path, headers=session).status_code == 200
    clock.advance(15 * 60)  # sessions last 15 minutes
    expired = client.get(path, headers=session)
    assert expired.status_code == 401 and expired.get_json()["error"]["code"] == "unauthenticated"
    session = auth(login(client, officer, officer.code(clock.now)))
    assert client.post("/v1/auth/logout", headers=session).status_code == 204
    assert client.get(path, headers=session).status_code == 401
    for forged in ("tvs_" + "A" * 43, "tvk_" + "A" * 43, "Basic abc"):
        assert client.get(path, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_matrix_under_hold_restriction_and_suspension(client: FlaskClient, components: Components, clock: Clock,
                                                      role: str) -> None:
    """Every role against a held and restricted subject's data, and (for API clients) once suspended."""
    checkout = auth(components.clients.create("matrix-checkout-held", "checkout")[1].expose())
    officer = auth(bearer(components, "privacy_officer", "matrix-officer"))
    headers = credentials(client, components, clock, role)
    mismatches: list[str] = []

    def check(case: str, got: object, want: object) -> None:
        if got != want:
            mismatches.append(f"{role} {case}: got {got}, want {want}")

    def held_tokens() -> dict[str, str]:
        items = [{"kind": kind, "value": value, "subject_id": "held-matrix"} for _, kind, value, _ in SAMPLES]
        answer = client.post("/v1/tokens/batch", json={"items": items}, headers=checkout).get_json()
        return {label: result["token"] for (label, *_), result in zip(SAMPLES, answer["results"], strict=True)}

    tokens = held_tokens()
    assert client.post("/v1/subjects/held-matrix/holds", json={"reason": "case 9", "until": "2099-01-01T00:00:00Z"},
                       headers=officer).status_code == 201
    assert client.put("/v1/subjects/held-matrix/restriction", json={"restricted": True},
                      headers=officer).status_code == 204

    # Restricted: only purpose `legal` reads, whatever the role may otherwise read.
    for purpose in PURPOSES:
        response = client.post("/v1/detokenize", json={"tokens": list(held_tokens().values()), "purpose": purpose},
                               headers=headers)
        if not grants(role, "detokenize"):
            check(f"detokenize ({purpose})", response.status_code, 403)
            continue
        for (label, kind, _value, use), result in zip(SAMPLES, response.get_json()["results"], strict=True):
            want = allows(role, "detokenize", kind, purpose, use) and purpose == "legal"
            check(f"restricted detokenize {label} for {purpose}", "value" in result, want)

    # Held: deleting answers 409 legal_hold to every role that could delete it (a CVV is never held).
    for label, kind, _value, _use in SAMPLES:
        status = client.delete(f"/v1/tokens/{tokens[label]}", headers=headers).status_code
        allowed = allows(role, "delete", kind)
        want = ((204 if kind == "cvv" else 409) if allowed else 404) if grants(role, "delete") else 403
        check(f"delete held {label}", status, want)

    # Suspended (API clients only): every endpoint answers 403 client_suspended.
    if role not in OPERATOR_ROLES:
        client_id = next(str(c["id"]) for c in components.clients.list() if c["name"] == f"matrix-{role}")
        with components.engine.begin() as conn:  # as vault.access.guessing does when a client guesses
            RowMacs(components.keys).update(conn, clients, client_id, {"suspended_at": clock.now})
        cache = components.clients._cache  # the 2 s authentication cache (wall clock), emptied instead of waiting
        if cache is not None:
            cache.clear()
        for method, path, body in (("get", f"/v1/tokens/{tokens['card']}", None),
                                   ("post", "/v1/detokenize", {"tokens": [tokens["card"]], "purpose": "payment"}),
                                   ("post", "/v1/tokens", {"kind": "email", "value": "x@example.com"})):
            answer = getattr(client, method)(path, json=body, headers=headers)
            check(f"suspended {method} {path}", (answer.status_code, answer.get_json()["error"]["code"]),
                  (403, "client_suspended"))
    assert mismatches == []
