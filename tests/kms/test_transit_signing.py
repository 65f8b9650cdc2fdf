"""Audit checkpoints signed by Transit by default with the Vault provider (issue #16), on a real OpenBao.

The KEK's AppRoles carry only the shipped deploy/vault policies: `tokenvault init` (admin role)
creates the ed25519 signing key, the service signs and reads public keys but cannot create,
export or back it up. A vault whose checkpoints were signed by the sealed seed before the
upgrade keeps verifying them, and the seed cannot sign anything after the first Transit entry.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from click.testing import CliRunner

from api.cli.main import main
from api.wiring import Components
from tests.conftest import make_components
from tests.support.openbao import OpenBao, enable_approle
from tests.vault.tokens.test_service import tokenize_one
from vault.audit.checkpoints import SIGNING_KEY_ID, CheckpointSigner, Entry, entry_lines, last_of
from vault.errors import AuditWriteFailed, ConfigurationError

SERVICE = ("tokenvault-service.hcl",)
ADMIN = ("tokenvault-service.hcl", "tokenvault-admin.hcl")


def _env(tmp_path: Path, database_url: str, openbao: OpenBao, key_name: str, signing: str,
         role: Any, **extra: str) -> dict[str, str]:
    return {"TOKENVAULT_DATA_DIR": str(tmp_path / "data"), "TOKENVAULT_DATABASE_URL": database_url,
            "TOKENVAULT_KMS": "vault", "VAULT_ADDR": openbao.addr, "TOKENVAULT_VAULT_KEY": key_name,
            "TOKENVAULT_AUDIT_SIGNING_KEY": signing, "VAULT_ROLE_ID": role.role_id,
            "VAULT_SECRET_ID": role.secret_id, "TOKENVAULT_AUDIT_CHECKPOINT_SECONDS": "3600",
            "TOKENVAULT_AUDIT_CHECKPOINT_DIR": str(tmp_path / "cp"), "TOKENVAULT_LOG_LEVEL": "warning", **extra}


def _components(env: dict[str, str]) -> Components:
    rest = {k: v for k, v in env.items() if k not in ("TOKENVAULT_DATA_DIR", "TOKENVAULT_DATABASE_URL")}
    return make_components(Path(env["TOKENVAULT_DATA_DIR"]), env["TOKENVAULT_DATABASE_URL"], **rest)


def _log(tmp_path: Path) -> list[dict[str, Any]]:
    path = next((tmp_path / "cp").glob("*.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines()]


def _init(env: dict[str, str]) -> str:
    result = CliRunner().invoke(main, ["init"], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_vault_provider_signs_checkpoints_in_transit_by_default(tmp_path: Path, database_url: str,
                                                                 openbao: OpenBao, key_name: str) -> None:
    signing = f"tv-audit-{secrets.token_hex(4)}"
    admin = enable_approle(openbao, key_name=key_name, policy_files=ADMIN, signing_key=signing)
    service = enable_approle(openbao, key_name=key_name, policy_files=SERVICE, signing_key=signing)
    assert "created audit checkpoint signing key" in _init(_env(tmp_path, database_url, openbao, key_name,
                                                                signing, admin))
    key = openbao.client().secrets.transit.read_key(name=signing)["data"]
    assert (key["type"], key["exportable"], key["allow_plaintext_backup"]) == ("ed25519", False, False)
    parts = _components(_env(tmp_path, database_url, openbao, key_name, signing, service))
    tokenize_one(parts, "email", "a@example.com")
    parts.trail.checkpoint()
    with parts.engine.connect() as conn:
        assert parts.trail.verify(conn).intact
    entries = _log(tmp_path)
    assert entries and {entry["key"] for entry in entries} == {f"transit:{signing}:v1"}
    # The service policy signs, but cannot export, back up, rotate or delete the key.
    token = openbao.client().auth.approle.login(role_id=service.role_id, secret_id=service.secret_id)["auth"][
        "client_token"]
    as_service = openbao.client(token)
    for call in (lambda: as_service.secrets.transit.export_key(name=signing, key_type="signing-key"),
                 lambda: as_service.secrets.transit.backup_key(name=signing),
                 lambda: as_service.secrets.transit.rotate_key(name=signing),
                 lambda: as_service.secrets.transit.update_key_configuration(name=signing, exportable=True)):
        with pytest.raises(hvac.exceptions.Forbidden):
            call()


def test_the_service_role_cannot_create_the_signing_key(tmp_path: Path, database_url: str, openbao: OpenBao,
                                                        key_name: str) -> None:
    signing = f"tv-audit-{secrets.token_hex(4)}"
    admin = enable_approle(openbao, key_name=key_name, policy_files=ADMIN, signing_key=signing)
    service = enable_approle(openbao, key_name=key_name, policy_files=SERVICE, signing_key=signing)
    openbao.client().secrets.transit.create_key(name=key_name, key_type="aes256-gcm96")  # the KEK only
    del admin
    parts = _components(_env(tmp_path, database_url, openbao, key_name, signing, service))
    with pytest.raises(AuditWriteFailed) as caught:  # fail closed: nothing is written unanchored
        tokenize_one(parts, "email", "a@example.com")
    assert isinstance(caught.value.__cause__, ConfigurationError)
    assert "tokenvault init" in str(caught.value.__cause__)
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key(name=signing)


def test_an_upgraded_vault_keeps_verifying_its_sealed_checkpoints(tmp_path: Path, database_url: str,
                                                                  openbao: OpenBao, key_name: str) -> None:
    signing = f"tv-audit-{secrets.token_hex(4)}"
    admin = enable_approle(openbao, key_name=key_name, policy_files=ADMIN, signing_key=signing)
    service = enable_approle(openbao, key_name=key_name, policy_files=SERVICE, signing_key=signing)
    # Before the upgrade: the sealed seed signed (what TOKENVAULT_AUDIT_SIGNING unset meant then).
    before = _components(_env(tmp_path, database_url, openbao, key_name, signing, admin,
                              TOKENVAULT_AUDIT_SIGNING="sealed"))
    tokenize_one(before, "email", "old@example.com")
    before.trail.checkpoint()
    before.trail.close()
    assert {entry["key"] for entry in _log(tmp_path)} == {SIGNING_KEY_ID}
    _init(_env(tmp_path, database_url, openbao, key_name, signing, admin))
    after = _components(_env(tmp_path, database_url, openbao, key_name, signing, service))
    tokenize_one(after, "email", "new@example.com")
    after.trail.checkpoint()
    keys = [entry["key"] for entry in _log(tmp_path)]
    assert keys[0] == SIGNING_KEY_ID and keys[-1] == f"transit:{signing}:v1"
    with after.engine.connect() as conn:
        assert after.trail.verify(conn).intact
    # A host that can still unseal the old seed appends an entry signed with it: refused.
    path = next((tmp_path / "cp").glob("*.jsonl"))
    lines = path.read_text().splitlines()
    legacy = CheckpointSigner(after.provider)
    with after.engine.connect() as conn:
        legacy.prepare(conn)
    n, prev = last_of(lines)
    forged = entry_lines([Entry("head", str(_log(tmp_path)[-1]["writer"]), 99, "00")], legacy,
                         after.trail._clock(), n, prev)
    path.write_text("\n".join([*lines, *forged]) + "\n")
    with after.engine.connect() as conn:
        report = after.trail.verify(conn)
    assert report.broken is not None
    assert f"entry {n + 1} signed with the sealed key after Transit signing" in report.broken.reason
