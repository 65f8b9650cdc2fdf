"""`tokenvault init` and `tokenvault clients ...`: machine roles only, and what an upgrade says about the rest."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from api.cli.main import main
from tests.conftest import make_components
from vault.keys.row_mac import RowMacs
from vault.storage.schema import clients


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "TOKENVAULT_DATA_DIR": str(tmp_path / "data"),
        "TOKENVAULT_DATABASE_URL": sqlite_url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "TOKENVAULT_LOG_LEVEL": "warning",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("role", ["admin", "privacy_officer", "auditor"])
def test_clients_create_refuses_a_human_role(env: dict[str, str], role: str) -> None:
    assert run("init")[0] == 0
    code, out = run("clients", "create", "--name", "someone", "--role", role)
    assert code == 2 and "human role" in out and "tokenvault operators create" in out and "tvk_" not in out
    assert run("clients", "list")[1].strip() == "no clients"  # said on stderr (issue 18)


def test_init_names_the_clients_whose_keys_stop_working(env: dict[str, str]) -> None:
    assert run("init")[0] == 0
    legacy = json.loads(run("clients", "create", "--name", "officer-script", "--role", "support")[1])
    fine = json.loads(run("clients", "create", "--name", "shop", "--role", "checkout")[1])
    parts = make_components(Path(env["TOKENVAULT_DATA_DIR"]), env["TOKENVAULT_DATABASE_URL"], **env)
    with parts.engine.begin() as conn:  # as an older version let `clients create --role privacy_officer` do
        conn.execute(update(clients).where(clients.c.id == legacy["client_id"]).values(role="privacy_officer"))
        RowMacs(parts.keys).backfill(conn, only_missing=False)  # such rows are sealed by `init` (#15)
    parts.engine.dispose()
    code, out = run("init")
    assert code == 0
    assert "1 API client(s) carry a human role" in out and legacy["client_id"] in out and "officer-script" in out
    assert fine["client_id"] not in out and "tokenvault clients revoke" in out
    assert run("clients", "revoke", legacy["client_id"])[0] == 0
    assert "human role" not in run("init")[1]


def test_clients_demo_makes_a_key_for_every_machine_role(env: dict[str, str], tmp_path: Path) -> None:
    assert run("init")[0] == 0
    out = tmp_path / "demo.env"
    assert run("clients", "demo", "--out", str(out))[0] == 0
    names = [line.split("=", 1)[0] for line in out.read_text().splitlines()]
    assert names == ["CHECKOUT_KEY", "PAYMENT_GATEWAY_KEY", "SHIPPING_KEY", "SUPPORT_KEY", "MARKETING_KEY",
                     "AUDIT_EXPORT_KEY"]
