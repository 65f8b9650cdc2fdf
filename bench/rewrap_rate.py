"""Rewrap rate: data keys moved to a new domain key per second, for 100,000 data keys.

Run: .venv/bin/python bench/rewrap_rate.py [--keys 100000] [--batch 1000] [--database-url URL]
Tokenizes `--keys` subject-less cards (one data key each), rotates the KEK and the record
domain keys, and times the rewrap job that follows (the same code `tokenvault keys rotate` runs).
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.settings import Settings
from api.wiring import build
from bench.audit_chain_cost import _drop_postgres, _fresh_postgres
from vault.audit import Actor, Origin
from vault.migrate import upgrade
from vault.service import TokenRequest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="tv-rewrap-"))
    url = args.database_url or f"sqlite:///{data_dir / 'bench.db'}"
    if url.startswith("postgres"):
        url = _fresh_postgres(url)
    parts = build(Settings.from_env({
        "TOKENVAULT_DATA_DIR": str(data_dir), "TOKENVAULT_DATABASE_URL": url,
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_KEY_CACHE_SECONDS": "1", "TOKENVAULT_LOG_LEVEL": "warning"}))
    parts.provider.initialise()
    upgrade(parts.engine)
    with parts.engine.begin() as conn:
        parts.keys.ensure_domain_keys(conn)
    checkout, admin, origin = Actor(id="bench", role="checkout"), Actor(id="bench-admin", role="admin"), Origin()
    card = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}
    started = time.perf_counter()
    for _ in range(0, args.keys, 1000):
        parts.tokens.tokenize(checkout, [TokenRequest(kind="card", value=card)] * 1000, origin)
    filled = time.perf_counter() - started
    job = parts.lifecycle.start_rotation(admin, origin, domain_keys_too=True)
    started = time.perf_counter()
    state = parts.lifecycle.run(job, batch=args.batch)
    elapsed = time.perf_counter() - started
    print(f"engine: {parts.engine.dialect.name}; {args.keys:,} data keys (tokenized in {filled:.1f} s)")
    print(f"rewrap job: {state['done']:,} keys in {elapsed:.1f} s = {state['done'] / elapsed:,.0f} keys/s "
          f"(batch {args.batch}; status {state['status']})")
    parts.engine.dispose()
    if url.startswith("postgres"):
        _drop_postgres(url)


if __name__ == "__main__":
    main()
