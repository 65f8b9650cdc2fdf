"""`tokenvault relay routes list|create|disable` from the host."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli.main import main
from tests.api.cli.test_subjects import use
from tests.conftest import make_components

SECRET = "sk_test_cli_0123456789abcdef"


def test_create_list_disable(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    make_components(tmp_path / "d", database_url, TOKENVAULT_MASTER_KEY=key).engine.dispose()
    use(monkeypatch, tmp_path / "d", database_url, key)
    route = {"name": "psp", "direction": "outbound", "upstream": "https://api.psp.example",
             "paths": ["/v1/charges"], "roles": ["payment_gateway"], "purposes": ["payment"],
             "substitute": {"body": ["card", "cvv"]}, "auth": {"type": "bearer", "bearer": SECRET}}
    runner = CliRunner()
    created = runner.invoke(main, ["relay", "routes", "create", "-"], input=json.dumps(route))
    assert created.exit_code == 0, created.output
    assert json.loads(created.output) == {"route": "psp", "version": 1}
    listed = runner.invoke(main, ["relay", "routes", "list"])
    assert listed.exit_code == 0 and SECRET not in listed.output
    assert json.loads(listed.output)["enabled"] is True
    refused = runner.invoke(main, ["relay", "routes", "create", "-"],
                            input=json.dumps({**route, "upstream": "https://10.0.0.1"}))
    assert refused.exit_code == 2 and "private, loopback" in refused.output
    disabled = runner.invoke(main, ["relay", "routes", "disable", "psp"])
    assert disabled.exit_code == 0 and json.loads(disabled.output)["version"] == 2
    assert json.loads(runner.invoke(main, ["relay", "routes", "list"]).output)["enabled"] is False
    inbound = {"name": "checkout", "direction": "inbound", "upstream": "https://shop.example", "paths": ["/orders"],
               "tokenize_role": "checkout", "allowed_origins": ["https://shop.example"],
               "inbound_fields": [{"path": "card", "kind": "card"}]}
    made = runner.invoke(main, ["relay", "routes", "create", "-"], input=json.dumps(inbound))
    assert made.exit_code == 0 and json.loads(made.output)["publishable_key"].startswith("pk_")
