"""Upgrade (issue #15 item 7): a vault from before row MACs and bound key wrappings keeps serving.

The database is taken back to revision 0016a (no `row_mac` columns) with its domain keys
in the old wrapping (bare key under the KEK); `tokenvault init` then migrates, rebinds
the wrappings and backfills the MACs, and the same clients, operators and tokens work.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import inspect, select, update

from api.cli.main import main
from api.wiring import Components
from tests.conftest import make_components
from tests.support.operators import PASSWORD, make_operator
from tests.vault.tokens.test_service import CARD, HERE, tokenize_one
from vault.audit.trail import HOST, Actor, Origin
from vault.keys.provider import KEY_BYTES
from vault.keys.row_mac import MACED
from vault.secret import Secret
from vault.storage.migrate import alembic_config
from vault.storage.schema import domain_keys


def _back_to_0016a(parts: Components) -> None:
    """What a vault of the previous release holds: no row_mac, format-1 wrapped domain keys."""
    with parts.engine.begin() as conn:
        for row in conn.execute(select(domain_keys.c.id, domain_keys.c.purpose, domain_keys.c.wrapped)).all():
            plain = parts.provider.unwrap([row.wrapped])[0]
            assert plain is not None
            bare = Secret(plain.expose()[-KEY_BYTES:])
            conn.execute(update(domain_keys).where(domain_keys.c.id == row.id)
                         .values(wrapped=parts.provider.wrap([bare])[0]))
    config = alembic_config()
    with parts.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0016a")


def test_init_upgrades_an_existing_vault_and_it_keeps_serving(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TOKENVAULT_DATA_DIR": str(tmp_path / "data"), "TOKENVAULT_DATABASE_URL": database_url,
           "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "TOKENVAULT_LOG_LEVEL": "warning", "TOKENVAULT_ARGON2_TIME_COST": "1",
           "TOKENVAULT_ARGON2_MEMORY_KIB": "64", "TOKENVAULT_ARGON2_PARALLELISM": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    old = make_components(tmp_path / "data", database_url, **env)
    _, gateway_key = old.clients.create("gateway", "payment_gateway")
    operator = make_operator(old, "aud.upgrade", "auditor", password=PASSWORD)
    card = tokenize_one(old, "card", CARD)
    officer = Actor(id="op_po", role="privacy_officer")
    request = old.privacy.register_request(officer, "cust-1", "access", Origin())
    old.relay_routes.propose(HOST, {"name": "psp", "direction": "outbound", "upstream": "https://api.psp.example",
                                    "paths": ["/v1/charges"], "roles": ["payment_gateway"], "purposes": ["payment"],
                                    "substitute": {"body": ["card"]}}, Origin())
    _back_to_0016a(old)
    with old.engine.connect() as conn:
        assert "row_mac" not in {c["name"] for c in inspect(conn).get_columns("clients")}
    old.trail.close()
    old.engine.dispose()

    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0, result.output
    assert "bound purpose and id into the wrapping of 8 domain keys" in result.output
    assert "sealed" in result.output

    new = make_components(tmp_path / "data", database_url, **env)
    try:
        with new.engine.connect() as conn:
            for table in MACED:
                assert "row_mac" in {c["name"] for c in inspect(conn).get_columns(table)}
        actor = new.clients.authenticate(gateway_key, Origin())
        assert actor.role == "payment_gateway"
        result_row = new.tokens.detokenize(actor, [card.token], "payment", HERE)[0]
        assert result_row.error is None and result_row.value["pan"] == "4111111111111111"
        assert [r["id"] for r in new.privacy.requests_due(officer, Origin())] == [request["id"]]
        assert [r["name"] for r in new.relay_routes.list(HOST, Origin())] == ["psp"]
        code = operator.code(new.tokens._clock())
        assert new.operators.login(operator.username, Secret(PASSWORD), Secret(code), Origin()).actor.id == operator.id
    finally:
        new.trail.close()
        new.engine.dispose()
