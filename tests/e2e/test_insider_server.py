"""Issue #15 against the real server (`tokenvault init` + `serve`, two workers, SQLite file in the data dir).

The insider edits the shipping client's row in the database file behind the running server's back.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests
from sqlalchemy import select, update

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


def test_a_deleted_audit_event_locks_every_worker_of_the_real_server(tmp_path: Path) -> None:
    """The insider deletes an anchored event (to hide a restore): both workers' integrity watches lock."""
    with running_server(tmp_path / "var", TOKENVAULT_INTEGRITY_WATCH_SECONDS="1") as server:
        checkout = server.client_key("checkout")
        headers = {"Authorization": f"Bearer {checkout}"}
        body = {"kind": "card", "value": {"pan": PAN, "exp_month": 1, "exp_year": 2099}}
        for _ in range(4):  # both workers write and anchor events
            assert requests.post(server.url + "/v1/tokens", timeout=10, headers=headers, json=body).status_code == 201
        time.sleep(3)  # anchored (1 s) and verified clean by each watch (1 s): no lockdown on a clean trail
        assert requests.post(server.url + "/v1/tokens", timeout=10, headers=headers, json=body).status_code == 201
        engine = create_engine_for(Settings.from_env(server.env).database_url)
        try:
            with engine.begin() as conn:
                first = conn.execute(select(audit_events.c.seq).where(audit_events.c.action == "create_client")
                                     .order_by(audit_events.c.seq).limit(1)).scalar_one()
                conn.execute(update(audit_events).where(audit_events.c.seq == first).values(detail="client=x"))
        finally:
            engine.dispose()
        deadline = time.monotonic() + 20
        codes: list[int] = []
        while time.monotonic() < deadline:
            codes = [requests.post(server.url + "/v1/tokens", timeout=10, headers=headers, json=body).status_code
                     for _ in range(6)]  # reaches both workers
            if set(codes) == {503}:
                break
            time.sleep(0.5)
        assert set(codes) == {503}, codes
        answer = requests.post(server.url + "/v1/tokens", timeout=10, headers=headers, json=body)
        assert answer.json()["error"]["code"] == "integrity_lockdown"
        assert "integrity lockdown" in server.log.read_text(errors="replace")
