"""Where a request's time goes: the real app in-process (Flask test client), under cProfile.

    .venv/bin/python bench/request_profile.py tokenize [--requests 2000] [--database-url URL] [--top 40]
    .venv/bin/python bench/request_profile.py batch-tokenize --requests 5

Cases: tokenize, detokenize (one item per request), batch-tokenize, batch-detokenize (1,000 items).
Prints milliseconds per request without the profiler (one process, one thread, no HTTP server,
so no lock waits): wall time and CPU time (process_time, which other load on a shared machine does
not inflate), then the functions with the most time, inclusive and own.
The whole app runs: authentication, rate limits, validation, keys, audit chain, metrics, logs.
For a sampled view of a running gunicorn worker, py-spy works too (`py-spy record -p PID`).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.http.app import create_app
from bench.embedded import discard, fresh_vault
from bench.harness.vaultdata import BATCH, UNLIMITED, luhn_complete

CASES = ("tokenize", "detokenize", "batch-tokenize", "batch-detokenize")


def card(subject: bool = False) -> dict[str, object]:
    pan = luhn_complete("4" + str(secrets.randbelow(10**14)).zfill(14))
    item: dict[str, object] = {"kind": "card", "value": {"pan": pan, "exp_month": 12, "exp_year": 2099}}
    if subject:
        item["subject_id"] = f"cust-{secrets.token_hex(4)}"
    return item


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("case", choices=CASES)
    parser.add_argument("--requests", type=int, help="requests per measurement (default 2000, batches 5)")
    parser.add_argument("--database-url", help="PostgreSQL server (a fresh database is made and dropped)")
    parser.add_argument("--top", type=int, default=40, help="functions to list (default 40)")
    parser.add_argument("--auth-cache-seconds", help="TOKENVAULT_AUTH_CACHE_SECONDS (0: authenticate on the "
                                                     "database every request; default 2)")
    parser.add_argument("--subject", action="store_true",
                        help="cards carry a subject id (detokenize then checks the subject's limits)")
    parser.add_argument("--json", action="store_true", help="print the timings as one JSON line, no profile")
    args = parser.parse_args()
    batch = args.case.startswith("batch")
    count = args.requests or (5 if batch else 2000)

    cache = {"TOKENVAULT_AUTH_CACHE_SECONDS": args.auth_cache_seconds} if args.auth_cache_seconds else {}
    parts, url = fresh_vault(args.database_url, "tokenvault-profile-", TOKENVAULT_RATE_LIMIT=UNLIMITED,
                             TOKENVAULT_DETOKENIZE_RATE_LIMIT=UNLIMITED, TOKENVAULT_LOG_LEVEL="info", **cache)
    try:
        client = create_app(parts=parts).test_client()
        checkout = {"Authorization": "Bearer " + parts.clients.create("profile-checkout", "checkout")[1].expose()}
        gateway = {"Authorization": "Bearer " + parts.clients.create("profile-gateway", "payment_gateway")[1].expose()}
        answer = client.post("/v1/tokens/batch", json={"items": [card(args.subject) for _ in range(BATCH)]},
                             headers=checkout)
        tokens = [r["token"] for r in answer.get_json()["results"]]

        def one(index: int) -> None:
            if args.case == "tokenize":
                response = client.post("/v1/tokens", json=card(), headers=checkout)
            elif args.case == "detokenize":
                body = {"tokens": [tokens[index % len(tokens)]], "purpose": "payment"}
                response = client.post("/v1/detokenize", json=body, headers=gateway)
            elif args.case == "batch-tokenize":
                response = client.post("/v1/tokens/batch", json={"items": [card() for _ in range(BATCH)]},
                                       headers=checkout)
            else:
                response = client.post("/v1/detokenize", json={"tokens": tokens, "purpose": "payment"},
                                       headers=gateway)
            if response.status_code not in (200, 201):
                raise SystemExit(f"{args.case}: HTTP {response.status_code}")

        def loop(run: Callable[[int], None]) -> tuple[float, float]:
            started, cpu = time.perf_counter(), time.process_time()
            for index in range(count):
                run(index)
            return ((time.perf_counter() - started) / count * 1000, (time.process_time() - cpu) / count * 1000)

        loop(one)  # warm-up: key caches, compiled statements
        timings = [loop(one) for _ in range(3)]
        per_request, cpu_per_request = min(t[0] for t in timings), min(t[1] for t in timings)
        items = BATCH if batch else 1
        print(f"{args.case}: {per_request:.3f} ms per request, {per_request / items * 1000:.1f} µs per item; "
              f"CPU {cpu_per_request:.3f} ms per request "
              f"({'PostgreSQL' if args.database_url else 'SQLite'}, best of 3 x {count}, no profiler)")
        if args.json:
            print(json.dumps({"case": args.case, "ms_per_request": per_request, "cpu_ms_per_request": cpu_per_request,
                              "database": "postgresql" if args.database_url else "sqlite"}))
            return 0
        profiler = cProfile.Profile()
        profiler.enable()
        loop(one)
        profiler.disable()
        for order in ("cumulative", "tottime"):
            print(f"\n--- sorted by {order} ---")
            pstats.Stats(profiler).sort_stats(order).print_stats(args.top)
    finally:
        discard(parts, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
