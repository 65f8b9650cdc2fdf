"""Rewrap rate: data keys moved to a new domain key per second, for 100,000 data keys.

Run: .venv/bin/python bench/rewrap_rate.py [--keys 100000] [--batch 1000] [--database-url URL]
Tokenizes `--keys` subject-less cards (one data key each), rotates the KEK and the record
domain keys, and times the rewrap job that follows (the same code `tokenvault keys rotate` runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.wiring import Components
from bench.embedded import discard, fresh_vault
from vault.audit.trail import Actor, Origin
from vault.tokens.records import TokenRequest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    parts, url = fresh_vault(args.database_url, "tv-rewrap-", TOKENVAULT_KEY_CACHE_SECONDS="1")
    try:
        rewrap(parts, args.keys, args.batch)
    finally:
        discard(parts, url)


def rewrap(parts: Components, keys: int, batch: int) -> None:
    checkout, admin, origin = Actor(id="bench", role="checkout"), Actor(id="bench-admin", role="admin"), Origin()
    card = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}
    started = time.perf_counter()
    for _ in range(0, keys, 1000):
        parts.tokens.tokenize(checkout, [TokenRequest(kind="card", value=card)] * 1000, origin)
    filled = time.perf_counter() - started
    job = parts.lifecycle.start_rotation(admin, origin, domain_keys_too=True)
    started = time.perf_counter()
    state = parts.lifecycle.run(job, batch=batch)
    elapsed = time.perf_counter() - started
    print(f"engine: {parts.engine.dialect.name}; {keys:,} data keys (tokenized in {filled:.1f} s)")
    print(f"rewrap job: {state['done']:,} keys in {elapsed:.1f} s = {state['done'] / elapsed:,.0f} keys/s "
          f"(batch {batch}; status {state['status']})")


if __name__ == "__main__":
    main()
