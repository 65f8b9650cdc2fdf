"""The integrity sweep: restored older copies and unread edits are found (issue #15 item 2).

A restored authentic copy passes its row MAC, so a request alone cannot tell; these tests
show what the sweep (`tokenvault integrity check`) reports, with the audit trail as witness.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Table, select, update

from api.cli.main import main
from api.wiring import Components
from tests.conftest import Clock
from tests.support.operators import make_operator
from tests.vault.access.test_approvals import request_disable, step_up
from vault.access.consistency import Finding, sweep
from vault.audit.trail import HOST, Origin
from vault.errors import IntegrityFailure
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import approvals, audit_events, clients, operators


def _snapshot(parts: Components, table: Table, key: str) -> dict[str, Any]:
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(table).where(table.c.id == key)).mappings().one())


def _restore(parts: Components, table: Table, old: dict[str, Any]) -> None:
    with parts.engine.begin() as conn:
        conn.execute(update(table).where(table.c.id == old["id"]).values(**old))


def _sweep(parts: Components) -> list[Finding]:
    with parts.engine.connect() as conn:
        return sweep(conn, RowMacs(parts.keys))


def test_a_clean_vault_has_no_findings(components: Components, clock: Clock) -> None:
    components.clients.create("gateway", "payment_gateway")
    make_operator(components, "alice", "admin")
    assert _sweep(components) == []


def test_a_revoked_client_restored_from_an_old_copy_is_found(components: Components) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _snapshot(components, clients, client_id)
    components.clients.revoke(client_id)
    _restore(components, clients, before)
    # The authentic old copy no longer authenticates: the trail's revoke_client event refuses it
    # (vault.audit.facts; tests/attacks/test_insider_rollback.py has every such restore)...
    fresh = type(components.clients)(components.engine, components.keys, components.policy, components.trail,
                                     cache_seconds=0)
    with pytest.raises(IntegrityFailure):
        fresh.authenticate(key, Origin())
    # ...and the sweep reports it too.
    assert _sweep(components) == [Finding("clients", client_id, "revoked in the audit trail, live in the table")]


def test_a_disabled_operator_restored_and_an_approval_replayed_are_found(
        components: Components, clock: Clock) -> None:
    alice, bob = make_operator(components, "alice", "admin"), make_operator(components, "bob", "admin")
    mallory = make_operator(components, "mallory", "admin")
    request_id = request_disable(components, clock, alice, mallory)
    mallory_before = _snapshot(components, operators, mallory.id)
    request_before = _snapshot(components, approvals, request_id)
    components.approvals.approve(step_up(components, clock, bob, 1), request_id, Origin())
    _restore(components, operators, mallory_before)
    _restore(components, approvals, request_before)
    found = _sweep(components)
    assert Finding("operators", mallory.id, "disabled in the audit trail, enabled in the table") in found
    assert Finding("approvals", request_id, "approved in the audit trail, pending in the table") in found


def test_an_edit_nobody_reads_is_found_and_the_cli_alerts(components: Components, monkeypatch: Any) -> None:
    client_id, _ = components.clients.create("support", "support")
    with components.engine.begin() as conn:
        conn.execute(update(clients).where(clients.c.id == client_id).values(role="payment_gateway"))
    assert _sweep(components) == [Finding("clients", client_id, "row MAC missing or wrong")]
    for name, value in components.settings.env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["integrity", "check"])
    assert result.exit_code == 1
    assert client_id in result.output
    with components.engine.connect() as conn:
        details = conn.execute(select(audit_events.c.detail).where(audit_events.c.action == "integrity")).scalars()
        assert [d for d in details if client_id in (d or "")]


def test_host_created_operator_and_sessions_pass(components: Components, clock: Clock) -> None:
    alice = make_operator(components, "alice", "admin")
    components.operators.login("alice", Secret(alice.password), Secret(alice.code(clock.now)), Origin())
    assert HOST.id and _sweep(components) == []
