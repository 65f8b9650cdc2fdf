"""API keys: rotation with a grace period, revocation, and the audit of credential changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from tests.conftest import Clock, make_components
from vault.audit.trail import Origin
from vault.errors import HumanRoleKeyRefused, NotFound, Unauthenticated, ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import audit_events, clients


def test_rotation_keeps_the_old_key_for_the_grace_period_only(tmp_path: Path, database_url: str,
                                                              clock: Clock) -> None:
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_AUTH_CACHE_SECONDS="0")
    registry = parts.clients
    client_id, old = registry.create("shop", "checkout")
    new = registry.rotate(client_id, grace_seconds=3600)
    assert new.expose().startswith("tvk_") and new != old
    for key in (old, new):
        assert registry.authenticate(key, Origin()).id == client_id
    clock.advance(3600)
    with pytest.raises(Unauthenticated):
        registry.authenticate(old, Origin())
    assert registry.authenticate(new, Origin()).id == client_id
    newest = registry.rotate(client_id, grace_seconds=0)  # immediate: the previous key stops at once
    with pytest.raises(Unauthenticated):
        registry.authenticate(new, Origin())
    registry.revoke(client_id)
    with pytest.raises(Unauthenticated):
        registry.authenticate(newest, Origin())
    with pytest.raises(NotFound):
        registry.rotate(client_id, grace_seconds=60)
    with pytest.raises(ValidationFailed):
        registry.rotate(registry.create("other", "support")[0], grace_seconds=8 * 24 * 3600)
    with parts.engine.connect() as conn:
        actions = [row.action for row in conn.execute(select(audit_events.c.action).where(
            audit_events.c.actor == "host").order_by(audit_events.c.seq))]
        stored = conn.execute(select(clients.c.key_hash, clients.c.previous_key_hash)
                              .where(clients.c.id == client_id)).one()
    assert actions == ["create_client", "rotate_client_key", "rotate_client_key", "revoke_client", "create_client"]
    assert newest.expose().encode() not in bytes(stored.key_hash) and len(bytes(stored.previous_key_hash)) == 32
    assert [row["id"] for row in registry.list()][:1] == [client_id]
    parts.engine.dispose()


def test_unknown_key_prefixes_are_refused(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url)
    for raw in ("", "tvk_", "tvs_" + "x" * 40, "x" * 500):
        with pytest.raises(Unauthenticated):
            parts.authenticator.authenticate(Secret(raw), Origin())
    with pytest.raises(Unauthenticated):
        parts.authenticator.authenticate(None, Origin())
    parts.engine.dispose()


@pytest.mark.parametrize("role", ["admin", "privacy_officer", "auditor", "intern"])
def test_api_keys_may_carry_machine_roles_only(tmp_path: Path, sqlite_url: str, role: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url)
    with pytest.raises(ValidationFailed) as refused:
        parts.clients.create("a person's key", role)
    assert refused.value.field == "role"
    assert parts.clients.list() == []
    assert parts.clients.create("siem", "audit_export")[0].startswith("cli_")
    parts.engine.dispose()


def test_an_existing_key_of_a_human_role_stops_working(tmp_path: Path, database_url: str, clock: Clock) -> None:
    """A key made before the rule (the row says privacy_officer) is refused, audited with a stable code."""
    parts = make_components(tmp_path / "data", database_url, clock, TOKENVAULT_AUTH_CACHE_SECONDS="0")
    client_id, key = parts.clients.create("legacy officer key", "support")
    with parts.engine.begin() as conn:  # what an older version allowed: `clients create --role privacy_officer`
        conn.execute(update(clients).where(clients.c.id == client_id).values(role="privacy_officer"))
        RowMacs(parts.keys).backfill(conn, only_missing=False)  # such rows are sealed by `init` (#15)
    with pytest.raises(HumanRoleKeyRefused) as refused:
        parts.authenticator.authenticate(key, Origin(source="10.0.0.9"))
    assert refused.value.code == "api_key_role_not_allowed" and isinstance(refused.value, Unauthenticated)
    assert [row["id"] for row in parts.clients.human_role_clients()] == [client_id]
    with parts.engine.connect() as conn:
        event = conn.execute(select(audit_events).where(audit_events.c.action == "authenticate")).mappings().one()
    assert (event["actor"], event["role"], event["outcome"], event["error_code"], event["source"]) == (
        client_id, "privacy_officer", "denied", "api_key_role_not_allowed", "10.0.0.9")
    parts.clients.revoke(client_id)
    assert parts.clients.human_role_clients() == []
    parts.engine.dispose()
