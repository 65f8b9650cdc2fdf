"""Soak: mixed traffic at 70 % of measured capacity on PostgreSQL with the Vault provider.

60 seconds here (TOKENVAULT_TEST_SOAK_SECONDS); the 10-minute run is `bench/soak.py`.
Zero errors, flat memory, and the audit chain verifies afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.database import postgres_database
from tests.support.openbao import enable_approle, ensure_transit, openbao_server
from tests.support.server import running_server
from tests.support.soak import soak

SECONDS = float(os.environ.get("TOKENVAULT_TEST_SOAK_SECONDS", "60"))


def test_soak_on_postgres_with_vault(tmp_path: Path) -> None:
    bao = openbao_server(tmp_path / "bao")
    try:
        ensure_transit(bao)
        key_name = "soak-kek"
        role = enable_approle(bao, key_name=key_name,
                              policy_files=("tokenvault-service.hcl", "tokenvault-admin.hcl"))
        vault_env = {"TOKENVAULT_KMS": "vault", "VAULT_ADDR": bao.addr, "VAULT_ROLE_ID": role.role_id,
                     "VAULT_SECRET_ID": role.secret_id, "TOKENVAULT_VAULT_KEY": key_name}
        with postgres_database() as url, running_server(tmp_path / "var", TOKENVAULT_DATABASE_URL=url,
                                                         **vault_env) as server:
            checkout, gateway = server.client_key("checkout"), server.client_key("payment_gateway")
            result = soak(server.url, checkout, gateway, server.process.pid, seconds=SECONDS)
            assert result.errors == []
            assert result.requests > 100
            # Flat memory: after warm-up, the workers grow by less than a quarter over the run.
            assert result.rss_end_kb < result.rss_start_kb * 1.25, (result.rss_start_kb, result.rss_end_kb)
            verified = json.loads(server.cli("audit", "verify"))
            assert verified["intact"] is True and verified["events"] >= result.requests
    finally:
        if not bao.external:
            bao.stop()
