"""What the one-way fact checks (vault/audit/facts.py) cost per request: the same app, checks on and off.

    .venv/bin/python bench/fact_checks.py [--requests 300] [--rounds 3] [--database-url URL]

In one process, alternating, CPU time (time.process_time, so a loaded machine does not skew the ratio):
single-item tokenize and single-item detokenize of a card with a subject (the subject's limits are
cross-checked) with the default 2-second authentication cache, and API-key authentication with no cache
(what a cache miss costs: the client row and its facts read). "off" replaces the checks with no-ops;
everything else is the real app.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.http.app import create_app
from bench.embedded import discard, fresh_vault
from bench.harness.vaultdata import UNLIMITED, luhn_complete
from vault.access import clients as clients_module
from vault.access.clients import ClientRegistry
from vault.audit.trail import Origin
from vault.tokens import subjects as subjects_module


def card() -> dict[str, object]:
    pan = luhn_complete("4" + str(secrets.randbelow(10**14)).zfill(14))
    return {"kind": "card", "value": {"pan": pan, "exp_month": 12, "exp_year": 2099},
            "subject_id": f"cust-{secrets.token_hex(4)}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    parts, url = fresh_vault(args.database_url, "tokenvault-facts-", TOKENVAULT_RATE_LIMIT=UNLIMITED,
                             TOKENVAULT_DETOKENIZE_RATE_LIMIT=UNLIMITED)
    real_client, real_subjects = clients_module.check_client, subjects_module.subject_facts
    try:
        client = create_app(parts=parts).test_client()
        checkout = {"Authorization": "Bearer " + parts.clients.create("f-checkout", "checkout")[1].expose()}
        gateway = {"Authorization": "Bearer " + parts.clients.create("f-gateway", "payment_gateway")[1].expose()}
        tokens = [client.post("/v1/tokens", json=card(), headers=checkout).get_json()["token"] for _ in range(50)]

        def tokenize(_: int) -> None:
            assert client.post("/v1/tokens", json=card(), headers=checkout).status_code == 201

        def detokenize(index: int) -> None:
            body = {"tokens": [tokens[index % len(tokens)]], "purpose": "payment"}
            assert client.post("/v1/detokenize", json=body, headers=gateway).status_code == 200

        uncached = ClientRegistry(parts.engine, parts.keys, parts.policy, parts.trail, cache_seconds=0)

        def authenticate(_: int) -> None:
            uncached.authenticate(_KEY[0], _ORIGIN)

        def cpu_ms(run: Callable[[int], None]) -> float:
            started = time.process_time()
            for index in range(args.requests):
                run(index)
            return (time.process_time() - started) / args.requests * 1000

        _ORIGIN = Origin()
        _KEY = [parts.clients.create("f-auth", "shipping")[1]]
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, run in (("tokenize", tokenize), ("detokenize (subject)", detokenize),
                              ("authenticate (no cache)", authenticate)):
                for mode in ("on", "off"):
                    if mode == "off":
                        clients_module.check_client = lambda conn, keys, row: None  # type: ignore[assignment]
                        subjects_module.subject_facts = lambda conn, keys, ids: {}  # type: ignore[assignment]
                    else:
                        clients_module.check_client, subjects_module.subject_facts = real_client, real_subjects
                    cpu_ms(run)  # warm
                    results.setdefault((name, mode), []).append(cpu_ms(run))
        for name in ("tokenize", "detokenize (subject)", "authenticate (no cache)"):
            on, off = min(results[(name, "on")]), min(results[(name, "off")])
            print(f"{name}: checks on {on:.3f} ms, off {off:.3f} ms CPU per request: {on / off:.3f}x "
                  f"({'PostgreSQL' if args.database_url else 'SQLite'}, best of {args.rounds} x {args.requests})")
    finally:
        clients_module.check_client, subjects_module.subject_facts = real_client, real_subjects
        discard(parts, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
