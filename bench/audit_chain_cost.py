"""Cost of the chained audit trail: tokenize with it versus with plain (unchained) events.

Same process, same database engine, rounds alternated A/B so drift hits both sides.
Run: .venv/bin/python bench/audit_chain_cost.py [--rounds 6] [--ops 400] [--database-url URL] [--json]
The unchained trail exists only here, for measurement; the service has no such switch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin
from vault.storage.schema import audit_events
from vault.tokens.records import TokenRequest
from vault.tokens.service import TokenService

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.embedded import discard, fresh_vault

_counter = itertools.count(1)


class UnchainedTrail(AuditTrail):
    """Writes the same rows without reading the chain head or computing a MAC."""

    def record(self, conn: Connection, events: Sequence[AuditEvent]) -> None:
        rows = []
        for event in events:
            row = event.row()
            row.update(writer="bench-unchained", chain_seq=next(_counter), mac_key_id="none",
                       prev_mac=bytes(32), mac=bytes(32))
            rows.append(row)
        conn.execute(insert(audit_events), rows)


def measure(rounds: int, ops: int, database_url: str | None = None) -> dict[str, Any]:
    """Chained and unchained tokenize ops/s (medians) and the chain's cost, on a fresh database."""
    parts, url = fresh_vault(database_url, "tv-bench-")
    try:
        unchained = TokenService(engine=parts.engine, keys=parts.keys, policy=parts.policy,
                                 trail=UnchainedTrail(parts.keys))
        actor, origin = Actor(id="bench", role="checkout"), Origin(request_id="bench")
        card = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}

        def run(service: TokenService) -> float:
            start = time.perf_counter()
            for _ in range(ops):
                service.tokenize(actor, [TokenRequest(kind="card", value=card)], origin)
            return ops / (time.perf_counter() - start)

        run(parts.tokens), run(unchained)  # warm-up
        chained_rates, plain_rates, ratios = [], [], []
        for _ in range(rounds):
            a, b = run(parts.tokens), run(unchained)
            chained_rates.append(a)
            plain_rates.append(b)
            ratios.append(a / b)
        return {"engine": parts.engine.dialect.name, "rounds": rounds, "ops": ops,
                "chained_ops_per_sec": statistics.median(chained_rates),
                "unchained_ops_per_sec": statistics.median(plain_rates),
                "cost": 1 - statistics.median(ratios)}
    finally:
        discard(parts, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = measure(args.rounds, args.ops, args.database_url)
    if args.json:
        print(json.dumps(result))
        return
    print(f"engine: {result['engine']}; {args.rounds} rounds x {args.ops} single-item tokenize calls")
    print("| trail | ops/s (median) |\n|---|---|")
    print(f"| chained (keyed MAC) | {result['chained_ops_per_sec']:,.0f} |\n"
          f"| unchained | {result['unchained_ops_per_sec']:,.0f} |")
    print(f"chain cost: {result['cost']:.1%} of throughput (median of paired ratios; target < 20 %)")


if __name__ == "__main__":
    main()
