"""`tokenvault audit ...` against a real database."""

from __future__ import annotations

import base64
import gzip
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, update

from api.cli.audit import cef_line
from api.cli.main import main
from tests.conftest import Clock, make_components
from tests.vault.tokens.test_service import CARD, GATEWAY, read, tokenize_one
from vault.storage.schema import audit_events


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "TOKENVAULT_DATA_DIR": str(tmp_path / "data"),
        "TOKENVAULT_DATABASE_URL": database_url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "TOKENVAULT_LOG_LEVEL": "warning",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    parts = make_components(tmp_path / "data", database_url, **{k: v for k, v in values.items()
                                                                if k != "TOKENVAULT_DATA_DIR"})
    record = tokenize_one(parts, "card", CARD, subject_id="cust-7")
    read(parts, GATEWAY, record.token, "payment")
    parts.trail.close()
    parts.engine.dispose()
    return values


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_verify_exit_codes(env: dict[str, str]) -> None:
    code, out = run("audit", "verify")
    assert code == 0 and json.loads(out)["intact"] is True
    assert run("audit", "checkpoint")[0] == 0
    from sqlalchemy import create_engine

    from vault.storage.engine import normalise_url

    engine = create_engine(normalise_url(env["TOKENVAULT_DATABASE_URL"]))
    with engine.begin() as conn:
        conn.execute(update(audit_events).where(audit_events.c.action == "detokenize").values(purpose="legal"))
    engine.dispose()
    code, out = run("audit", "verify")  # incremental: the edit sits before the last verified anchor
    assert code == 0 and json.loads(out)["incremental"] is True
    code, out = run("audit", "verify", "--full")
    assert code == 1 and json.loads(out)["broken"]["reason"] == "event modified"


def test_export_jsonl_and_cef(env: dict[str, str]) -> None:
    code, out = run("audit", "export", "--format", "jsonl")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["action"] for e in lines] == ["tokenize", "detokenize"]
    code, out = run("audit", "export", "--format", "cef", "--since", "2000-01-01T00:00:00Z")
    assert code == 0 and all(line.startswith("CEF:0|TokenVault|TokenVault|1|") for line in out.splitlines())
    assert "cs2=cust-7" in out and "4111111111111111" not in out


def test_cef_escapes_separators() -> None:
    event = {"seq": 1, "at": "t", "actor": "a=b", "role": "r|x", "action": "act|ion", "outcome": "allowed",
             "error_code": None, "purpose": None, "origin": {"source": None, "user_agent": "x\ny",
                                                             "request_id": None},
             "resource": {"token": None, "subject_id": None}}
    line = cef_line(event)
    assert "act\\|ion" in line and "suser=a\\=b" in line and "\n" not in line


def test_archive_then_verify(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events older than 90 days move to a MAC-protected archive that `verify --archives` still checks."""
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    for name, value in {"TOKENVAULT_DATA_DIR": str(tmp_path / "data"), "TOKENVAULT_DATABASE_URL": sqlite_url,
                        "TOKENVAULT_MASTER_KEY": key, "TOKENVAULT_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)
    clock = Clock()
    clock.now -= timedelta(days=200)
    parts = make_components(tmp_path / "data", sqlite_url, clock, TOKENVAULT_MASTER_KEY=key)
    old = tokenize_one(parts, "card", CARD)
    clock.now = datetime.now(UTC)
    read(parts, GATEWAY, old.token, "payment")
    parts.trail.close()
    parts.engine.dispose()
    archive_dir = tmp_path / "archive"
    code, out = run("audit", "archive", "--older-than-days", "90", "--out", str(archive_dir))
    assert code == 0 and json.loads(out)["archived"] == 1
    code, out = run("audit", "verify", "--archives", str(archive_dir))
    assert code == 0, out
    assert json.loads(out)["events"] == 1
    archived = next(archive_dir.glob("*.jsonl.gz"))
    lines = gzip.decompress(archived.read_bytes()).decode().replace("tokenize", "detokenize")
    archived.write_bytes(gzip.compress(lines.encode()))
    code, out = run("audit", "verify", "--archives", str(archive_dir))
    assert code == 1 and "archive modified" in json.loads(out)["archive_files"][0]


def _engine(env: dict[str, str]) -> Any:
    from sqlalchemy import create_engine

    from vault.storage.engine import normalise_url

    return create_engine(normalise_url(env["TOKENVAULT_DATABASE_URL"]))


def test_a_commands_single_event_is_anchored_before_it_exits(env: dict[str, str]) -> None:
    """Issue case 3: deleting the one event `clients create` wrote is detected, with no window."""
    code, out = run("clients", "create", "--name", "shop", "--role", "checkout")
    assert code == 0, out
    code, out = run("audit", "verify")
    assert code == 0 and json.loads(out)["anchored"] is True
    engine = _engine(env)
    with engine.begin() as conn:
        conn.execute(delete(audit_events).where(audit_events.c.action == "create_client"))
    engine.dispose()
    code, out = run("audit", "verify")
    assert code == 1 and json.loads(out)["broken"]["reason"] in {
        "chain deleted: its checkpointed events are missing",  # a full run
        "events truncated: a checkpointed event is missing"}  # resuming from the anchor that is gone


def test_a_crashed_writers_tail_is_reported_with_its_size(tmp_path: Path, database_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that stopped without a checkpoint (SIGKILL): verify says how much is un-anchored, exit 3."""
    values = {"TOKENVAULT_DATA_DIR": str(tmp_path / "data"), "TOKENVAULT_DATABASE_URL": database_url,
              "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
              "TOKENVAULT_AUDIT_CHECKPOINT_SECONDS": "3600", "TOKENVAULT_LOG_LEVEL": "warning"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    clock = Clock()
    clock.now -= timedelta(minutes=5)
    parts = make_components(tmp_path / "data", database_url, clock, **values)
    tokenize_one(parts, "card", CARD)
    tokenize_one(parts, "email", "a@example.com")
    parts.engine.dispose()  # no trail.close(): no last checkpoint, as after SIGKILL
    code, out = run("audit", "verify")
    result = json.loads(out)
    assert code == 3 and result["intact"] is True and result["anchored"] is False
    assert [tail["events"] for tail in result["unanchored"]] == [2]
