"""Cost of the chained audit trail: tokenize with it versus with plain (unchained) events.

Same process, same database engine, rounds alternated A/B so drift hits both sides.
Run: .venv/bin/python bench/audit_chain_cost.py [--rounds 6] [--ops 400] [--database-url URL]
The unchained trail exists only here, for measurement; the service has no such switch.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from vault.audit import AuditEvent, AuditTrail, Origin
from vault.service import TokenRequest, TokenService
from vault.storage import audit_events

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.embedded import drop_postgres, fresh_vault

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--ops", type=int, default=400)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    parts, url = fresh_vault(args.database_url, "tv-bench-")
    unchained = TokenService(engine=parts.engine, keys=parts.keys, policy=parts.policy,
                             trail=UnchainedTrail(parts.keys))
    from vault.audit import Actor

    actor, origin = Actor(id="bench", role="checkout"), Origin(request_id="bench")
    card = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}

    def run(service: TokenService) -> float:
        start = time.perf_counter()
        for _ in range(args.ops):
            service.tokenize(actor, [TokenRequest(kind="card", value=card)], origin)
        return args.ops / (time.perf_counter() - start)

    run(parts.tokens), run(unchained)  # warm-up
    chained_rates, plain_rates, ratios = [], [], []
    for _ in range(args.rounds):
        a, b = run(parts.tokens), run(unchained)
        chained_rates.append(a)
        plain_rates.append(b)
        ratios.append(a / b)
    chained, plain = statistics.median(chained_rates), statistics.median(plain_rates)
    print(f"engine: {parts.engine.dialect.name}; {args.rounds} rounds x {args.ops} single-item tokenize calls")
    print("| trail | ops/s (median) |\n|---|---|")
    print(f"| chained (keyed MAC) | {chained:,.0f} |\n| unchained | {plain:,.0f} |")
    cost = 1 - statistics.median(ratios)
    print(f"chain cost: {cost:.1%} of throughput (median of paired ratios; target < 20 %)")
    parts.engine.dispose()
    if url.startswith("postgres"):
        drop_postgres(url)


if __name__ == "__main__":
    main()
