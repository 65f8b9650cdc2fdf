"""`tokenvault keys epoch` for a scheduler: opens an epoch when due, finishes it, then waits."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from tests.api.cli.test_subjects import run, use
from tests.conftest import make_components
from tests.support.cards import HERE
from tests.vault.tokens.test_service import tokenize_one
from vault.audit.trail import Actor

OFFICER = Actor(id="po", role="privacy_officer")


def test_epoch_runs_when_due_and_destroys_old_kek_versions(tmp_path: Path, database_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    parts = make_components(tmp_path / "a", database_url, TOKENVAULT_MASTER_KEY=key)
    made = tokenize_one(parts, "email", "epoch.person@example.com", subject_id="cust-9")
    parts.engine.dispose()
    use(monkeypatch, tmp_path / "a", database_url, key)
    monkeypatch.setenv("TOKENVAULT_KEY_CACHE_SECONDS", "0.1")
    first = json.loads(run("keys", "epoch", "--batch", "10").splitlines()[-1])
    assert first["status"] == "done" and first["kind"] == "epoch"
    skipped = json.loads(run("keys", "epoch", "--due-only").splitlines()[-1])
    assert skipped["epoch"] is False
    listing = json.loads(run("keys", "list"))
    assert listing["kek"]["versions"].keys() == {"2"} and listing["kek"]["min_decryption_version"] == 2
    again = make_components(tmp_path / "a", database_url, TOKENVAULT_MASTER_KEY=key)
    assert again.tokens.detokenize(OFFICER, [made.token], "legal", HERE)[0].value == "epoch.person@example.com"
    again.engine.dispose()
