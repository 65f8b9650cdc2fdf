"""Long run of the concurrency harness (tests/support/harness.py): two instances, one database.

    .venv/bin/python bench/concurrency_soak.py --database-url postgresql://postgres@127.0.0.1:5432/soak \
        --rounds 30 --seconds 20

Exits 1 on any broken invariant (lost or duplicated delivery, half-written state, audit gap).
The bounded run is tests/e2e/test_concurrency.py, part of `make test`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import make_settings
from tests.support import harness
from vault.storage.engine import create_engine_for
from vault.storage.migrate import upgrade


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", help="default: a fresh SQLite file")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{scratch}/soak.db"
        engine = create_engine_for(url)
        upgrade(engine)
        engine.dispose()
        settings = make_settings(Path(scratch) / "data", url, TOKENVAULT_KEY_CACHE_SECONDS="0.3")
        first, second = harness.two_instances(settings)
        problems = harness.run(first, second, rounds=args.rounds, seconds=args.seconds, report=print)
        for parts in (first, second):
            parts.trail.close()
            parts.engine.dispose()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
