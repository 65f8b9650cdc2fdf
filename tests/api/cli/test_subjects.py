"""Privacy work from the CLI: export, requests, purge, and a business transfer between two vaults."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from api.cli.main import main
from api.wiring import Components
from tests.conftest import make_components
from tests.support.operators import make_operator
from tests.vault.tokens.test_service import CARD, GATEWAY, HERE, read, tokenize_one
from vault.audit.trail import Actor
from vault.errors import DecryptionFailed
from vault.privacy.transfer import open_bundle, recipient_fingerprint
from vault.secret import Secret
from vault.storage.engine import create_engine_for
from vault.storage.migrate import upgrade


def use(monkeypatch: pytest.MonkeyPatch, data_dir: Path, url: str, key: str) -> None:
    for name, value in {"TOKENVAULT_DATA_DIR": str(data_dir), "TOKENVAULT_DATABASE_URL": url,
                        "TOKENVAULT_MASTER_KEY": key, "TOKENVAULT_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(name, value)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_export_and_requests(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    parts = make_components(tmp_path / "a", database_url, TOKENVAULT_MASTER_KEY=key)
    tokenize_one(parts, "email", "cli.person@example.com", subject_id="cust-5")
    parts.privacy.register_request(Actor(id="po", role="privacy_officer"), "cust-5", "access", HERE)
    parts.engine.dispose()
    use(monkeypatch, tmp_path / "a", database_url, key)
    out = tmp_path / "export.json"
    run("subjects", "export", "cust-5", "--out", str(out))
    assert json.loads(out.read_text())["data"][0]["value"] == "cli.person@example.com"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    lines = run("subjects", "requests", "--due", "40").splitlines()
    assert [json.loads(line)["right"] for line in lines] == ["access"]
    assert json.loads(run("purge"))["purged"] == 0


def approved_transfer(parts: Components, subjects: str, recipient: str) -> str:
    """Two privacy officers: one files the transfer, the other approves it (each with a fresh TOTP code)."""
    now = datetime.now(UTC)
    proofs = []
    for name in ("po-files", "po-approves"):
        officer = make_operator(parts, name, "privacy_officer")
        actor = Actor(id=officer.id, role="privacy_officer", name=name)
        proofs.append(parts.operators.step_up(actor, Secret(officer.code(now)), HERE, operation="export"))
    filed = parts.approvals.request(proofs[0], "transfer_export", {"subjects": subjects, "recipient": recipient},
                                    HERE)
    return parts.approvals.approve(proofs[1], filed.id, HERE).id


def test_transfer_round_trip_between_two_vaults(tmp_path: Path, sqlite_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source_key = base64.b64encode(secrets.token_bytes(32)).decode()
    source = make_components(tmp_path / "src", sqlite_url, TOKENVAULT_MASTER_KEY=source_key)
    card = tokenize_one(source, "card", CARD, subject_id="moving-1", reference="ord-1")
    email = tokenize_one(source, "email", "mover@example.com", subject_id="moving-1", deterministic=True)
    tokenize_one(source, "cvv", "999", subject_id="moving-1")
    tokenize_one(source, "email", "stays@example.com", subject_id="staying-2")
    source_approvals = source  # the approval is filed and approved below, once the recipient key exists

    target_key = base64.b64encode(secrets.token_bytes(32)).decode()
    target_url = f"sqlite:///{tmp_path / 'target.db'}"
    fresh = create_engine_for(target_url)
    upgrade(fresh)
    fresh.dispose()
    target = make_components(tmp_path / "dst", target_url, TOKENVAULT_MASTER_KEY=target_key)
    use(monkeypatch, tmp_path / "dst", target_url, target_key)
    run("transfer", "keygen", "--out", str(tmp_path / "acquirer.pem"))

    use(monkeypatch, tmp_path / "src", sqlite_url, source_key)
    bundle_path = tmp_path / "bundle.json"
    public = (tmp_path / "acquirer.pem.pub").read_bytes()
    approval = approved_transfer(source_approvals, "moving-1", recipient_fingerprint(public))
    source.engine.dispose()
    refused = CliRunner().invoke(main, ["transfer", "export", "--recipient-public-key",
                                        str(tmp_path / "acquirer.pem.pub"), "--subjects", "moving-1,staying-2",
                                        "--out", str(bundle_path), "--approval", approval])
    assert refused.exit_code == 2  # the approval names other subjects
    counts = json.loads(run("transfer", "export", "--recipient-public-key", str(tmp_path / "acquirer.pem.pub"),
                            "--subjects", "moving-1", "--out", str(bundle_path), "--approval", approval))
    assert counts == {"moving-1": 2}  # card and email; never the CVV
    again = CliRunner().invoke(main, ["transfer", "export", "--recipient-public-key",
                                      str(tmp_path / "acquirer.pem.pub"), "--subjects", "moving-1",
                                      "--out", str(tmp_path / "twice.json"), "--approval", approval])
    assert again.exit_code == 2  # an approval is good for one export
    raw = bundle_path.read_text()
    assert "mover@example.com" not in raw and CARD["pan"] not in raw.replace(" ", "")

    stranger = tmp_path / "stranger.pem"
    run("transfer", "keygen", "--out", str(stranger))
    with pytest.raises(DecryptionFailed):
        open_bundle(json.loads(raw), stranger.read_bytes())
    tampered = json.loads(raw)
    tampered["manifest"]["subjects"] = ["someone-else"]
    with pytest.raises(DecryptionFailed):
        open_bundle(tampered, (tmp_path / "acquirer.pem").read_bytes())

    use(monkeypatch, tmp_path / "dst", target_url, target_key)
    result = json.loads(run("transfer", "import", str(bundle_path), "--private-key", str(tmp_path / "acquirer.pem")))
    assert result == {"subjects": ["moving-1"], "loaded": 2, "refused": 0}
    assert read(target, GATEWAY, card.token, "payment")["pan"] == "4111111111111111"
    assert target.tokens.metadata(GATEWAY, card.token, HERE).metadata["reference"] == "ord-1"
    again = tokenize_one(target, "email", "mover@example.com", subject_id="moving-1", deterministic=True)
    assert again.token == email.token
    second = json.loads(run("transfer", "import", str(bundle_path), "--private-key", str(tmp_path / "acquirer.pem")))
    # A second import never overwrites: the card token exists (refused); the deterministic email resolves to itself.
    assert (second["loaded"], second["refused"]) == (1, 1)
