"""A flood of bad credentials: 429 per source before the database, one audit event per source and window."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from api.http.app import create_app
from tests.conftest import auth, make_components
from vault.storage.schema import audit_events

EMAIL = {"kind": "email", "value": "a@example.com"}


def test_failed_authentications_are_limited_per_source_and_counted(tmp_path: Path, database_url: str) -> None:
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_AUTH_FAILURE_RATE_LIMIT="5/minute")
    try:
        client = create_app(parts=parts).test_client()
        _cid, good = parts.clients.create("shop", "checkout")
        with parts.engine.connect() as conn:
            before = conn.execute(select(func.count()).select_from(audit_events)).scalar_one()
        statuses = []
        for attempt in range(40):
            response = client.post("/v1/tokens", json=EMAIL, headers=auth(f"tvk_guess{attempt}"),
                                   environ_base={"REMOTE_ADDR": "198.51.100.9"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
        assert statuses == [401] * 5 + [429] * 35
        with parts.engine.connect() as conn:  # not one row written during the flood
            assert conn.execute(select(func.count()).select_from(audit_events)).scalar_one() == before
        # Another source is not starved.
        ok = client.post("/v1/tokens", json=EMAIL, headers=auth(good.expose()),
                         environ_base={"REMOTE_ADDR": "203.0.113.5"})
        assert ok.status_code == 201
        assert parts.trail.flush_failures(force=True) == 2
        with parts.engine.connect() as conn:
            rows = conn.execute(select(audit_events.c.source, audit_events.c.error_code, audit_events.c.detail)
                                .where(audit_events.c.action == "authenticate")
                                .order_by(audit_events.c.error_code)).all()
        assert [(r.source, r.error_code, r.detail.split()[0]) for r in rows] == [
            ("198.51.100.9", "rate_limited", "count=35"), ("198.51.100.9", "unauthenticated", "count=5")]
    finally:
        parts.trail.close()
        parts.engine.dispose()
