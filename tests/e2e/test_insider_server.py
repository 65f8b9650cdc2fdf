"""Issue #15 against the real server (`tokenvault init` + `serve`, two workers, SQLite file in the data dir).

The insider edits the shipping client's row in the database file behind the running server's back.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests
from sqlalchemy import delete, select, update

from api.settings import Settings
from tests.support.server import running_server
from vault.storage.engine import create_engine_for
from vault.storage.schema import audit_events, clients

PAN = "4000002760003184"


def test_client_role_edit_is_refused_by_the_real_server(tmp_path: Path) -> None:
    with running_server(tmp_path / "var") as server:
        checkout, shipping = server.client_key("checkout"), server.client_key("shipping")
        made = requests.post(server.url + "/v1/tokens", timeout=10, headers={"Authorization": f"Bearer {checkout}"},
                             json={"kind": "card", "value": {"pan": PAN, "exp_month": 1, "exp_year": 2099}})
        assert made.status_code == 201, made.text
        engine = create_engine_for(Settings.from_env(server.env).database_url)
        try:
            with engine.begin() as conn:
                assert conn.execute(update(clients).where(clients.c.name == "e2e-shipping")
                                    .values(role="payment_gateway")).rowcount == 1
            answer = requests.post(server.url + "/v1/detokenize", timeout=10,
                                   headers={"Authorization": f"Bearer {shipping}"},
                                   json={"tokens": [made.json()["token"]], "purpose": "payment"})
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "integrity_failure"
            assert PAN not in answer.text
            with engine.connect() as conn:
                alerts = conn.execute(select(audit_events.c.detail).where(audit_events.c.action == "integrity"))
                assert [detail for detail in alerts.scalars() if detail == "table=clients"]
        finally:
            engine.dispose()
        assert PAN not in server.log.read_text(errors="replace")


def test_a_revoked_key_restored_with_its_event_deleted_locks_every_worker_of_the_real_server(tmp_path: Path) -> None:
    """The full rollback: the revoked client's old row put back and its `revoke_client` event deleted.

    Each worker's integrity watch (every second here) finds the chain broken and locks: every API key
    answers 503 `integrity_lockdown`, the restored one included.
    """
    with running_server(tmp_path / "var", TOKENVAULT_INTEGRITY_WATCH_SECONDS="1") as server:
        checkout, leaked = server.client_key("checkout"), server.client_key("shipping")
        engine = create_engine_for(Settings.from_env(server.env).database_url)
        try:
            with engine.connect() as conn:
                before = dict(conn.execute(select(clients).where(clients.c.name == "e2e-shipping")).mappings().one())
            server.cli("clients", "revoke", before["id"])
            headers = {"Authorization": f"Bearer {checkout}"}
            body = {"kind": "card", "value": {"pan": PAN, "exp_month": 1, "exp_year": 2099}}
            time.sleep(3)  # each watch has verified the revocation (and found nothing to lock for)
            assert requests.post(server.url + "/v1/tokens", timeout=10, headers=headers, json=body).status_code == 201
            with engine.begin() as conn:
                conn.execute(update(clients).where(clients.c.id == before["id"]).values(**before))
                assert conn.execute(delete(audit_events).where(
                    audit_events.c.entity == f"client:{before['id']}")).rowcount == 1
        finally:
            engine.dispose()
        deadline = time.monotonic() + 20
        codes: list[int] = []
        while time.monotonic() < deadline:
            codes = [requests.get(server.url + "/v1/tokens/tok_none", timeout=10,
                                  headers={"Authorization": f"Bearer {key}"}).status_code
                     for key in (checkout, leaked) * 3]  # reaches both workers
            if set(codes) == {503}:
                break
            time.sleep(0.5)
        assert set(codes) == {503}, codes
        assert "integrity lockdown" in server.log.read_text(errors="replace")
