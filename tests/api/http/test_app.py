"""The app factory: what the service says at start."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from api.http.app import create_app
from api.wiring import Components
from vault.keys.row_mac import RowMacs
from vault.storage.schema import clients


def test_the_start_log_names_clients_whose_keys_are_refused(components: Components,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    legacy, key = components.clients.create("officer-script", "support")
    fine, _ = components.clients.create("shop", "checkout")
    with components.engine.begin() as conn:  # an API key of a human role, as older versions allowed
        conn.execute(update(clients).where(clients.c.id == legacy).values(role="privacy_officer"))
        RowMacs(components.keys).backfill(conn, only_missing=False)  # such rows are sealed by `init` (#15)
    create_app(parts=components)
    logged = capsys.readouterr().err
    assert "api key refused: client carries a human role" in logged
    assert legacy in logged and "privacy_officer" in logged and fine not in logged
    assert key.expose() not in logged
