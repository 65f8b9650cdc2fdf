"""Two gunicorn workers, many clients: every request leaves exactly one verifiable event."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import requests
from sqlalchemy import func, select

from tests.support.server import running_server
from vault.storage.engine import create_engine_for
from vault.storage.schema import audit_events

SECONDS = float(os.environ.get("TOKENVAULT_TEST_CONCURRENCY_SECONDS", "30"))
CLIENTS = 12


def test_concurrent_traffic_keeps_one_verifiable_event_per_request(tmp_path: Path) -> None:
    with running_server(tmp_path / "var") as server:
        checkout, gateway = server.client_key("checkout"), server.client_key("payment_gateway")
        counts = {"tokenize": 0, "detokenize": 0}
        failures: list[int] = []
        lock = threading.Lock()
        deadline = time.monotonic() + SECONDS

        def client(index: int) -> None:
            session = requests.Session()
            pan = ["4111111111111111", "5555555555554444", "378282246310005"][index % 3]
            while time.monotonic() < deadline:
                made = session.post(server.url + "/v1/tokens", timeout=10,
                                    headers={"Authorization": f"Bearer {checkout}"},
                                    json={"kind": "card", "value": {"pan": pan, "exp_month": 1, "exp_year": 2099}})
                read = session.post(server.url + "/v1/detokenize", timeout=10,
                                    headers={"Authorization": f"Bearer {gateway}"},
                                    json={"tokens": [made.json()["token"]], "purpose": "payment"})
                with lock:
                    counts["tokenize"] += 1
                    counts["detokenize"] += 1
                    failures.extend(s for s in (made.status_code, read.status_code) if s not in (200, 201))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        verified = json.loads(server.cli("audit", "verify"))
        assert verified["intact"] is True
        engine = create_engine_for(f"sqlite:///{tmp_path / 'var' / 'tokenvault.db'}")
        with engine.connect() as conn:
            recorded = dict(conn.execute(select(audit_events.c.action, func.count())
                                         .where(audit_events.c.action.in_(["tokenize", "detokenize"]))
                                         .group_by(audit_events.c.action)).all())
            writers = conn.execute(select(func.count(func.distinct(audit_events.c.writer)))).scalar_one()
        engine.dispose()
        assert recorded == counts
        assert writers >= 2
        assert counts["tokenize"] > 100
