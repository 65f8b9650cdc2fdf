"""Superseded by bench/run.py (`make bench`): kept for its old command line.

Runs only hello, single-item tokenize and single-item detokenize on the SQLite vault with local keys
(as this script used to), with no PostgreSQL, audit chain cost or memory top-up; every other flag of
run.py still applies and overrides these defaults:

    .venv/bin/python bench/run_http.py [--duration 10] [--rounds 2] [--connections 32] [--workers 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import run
from bench.harness.procs import exit_with

DEFAULTS = ["--cases", "hello@hello,tokenize@sqlite-local,detokenize@sqlite-local", "--no-postgres", "--no-extras",
            "--duration", "10", "--rounds", "2", "--tokens", "1000"]


def main(argv: list[str] | None = None) -> int:
    return run.main([*DEFAULTS, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    exit_with(main)
