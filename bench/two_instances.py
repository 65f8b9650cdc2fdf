"""Load on two instances sharing one PostgreSQL, next to one SQLite instance, in one run.

Run: .venv/bin/python bench/two_instances.py [--duration 60] [--sqlite-duration 20]
Two `tokenvault serve` on different ports share a fresh PostgreSQL database (and one data
dir, so one keyring); wrk drives both at once for tokenize, then detokenize. A single
SQLite instance runs the same cases for comparison. Prints req/s (both instances
together), p99 and errors per endpoint; exits 1 on any error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.embedded import drop_postgres, fresh_postgres
from bench.harness.procs import Processes, find_tokenvault, free_port
from bench.harness.vaultdata import UNLIMITED, cli, create_client, create_tokens, read_back, write_tokens
from bench.harness.wrk import run_wrk


def start_vault(processes: Processes, tokenvault: Path, env: dict[str, str], work: Path, name: str,
                workers: int) -> str:
    port = free_port()
    serve_env = {**env, "TOKENVAULT_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(work / f"m-{name}"),
                 "XDG_RUNTIME_DIR": str(work / f"r-{name}")}
    Path(serve_env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(mode=0o700)
    Path(serve_env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700)
    url = f"http://127.0.0.1:{port}"
    processes.start(name, [str(tokenvault), "serve", "--workers", str(workers)], serve_env, url, "/readyz",
                    work / f"{name}.log")
    return url


def measure(args: argparse.Namespace, urls: list[str], seconds: int, keys: dict[str, str],
            tokens_file: Path, base: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each case against every url at once; req/s summed, p99 the worst."""
    out: dict[str, dict[str, Any]] = {}
    for case in ("tokenize", "detokenize"):
        results: list[dict[str, Any]] = []
        env = {**base, "BENCH_API_KEY": keys[case]}
        extra = [str(tokens_file)] if case == "detokenize" else []
        def drive(target: str, case: str = case, env: dict[str, str] = env, extra: list[str] = extra,
                  results: list[dict[str, Any]] = results) -> None:
            results.append(run_wrk(case, target, seconds, threads=args.threads, connections=args.connections,
                                   env=env, script_args=extra))

        threads = [threading.Thread(target=drive, args=(url,)) for url in urls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out[case] = {"req_per_s": sum(r["requests_per_sec"] for r in results),
                     "p99_ms": max(r["latency_us"]["p99"] for r in results) / 1000,
                     "errors": sum(r["http_errors"] for r in results)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--sqlite-duration", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    tokenvault = find_tokenvault()
    work = Path(tempfile.mkdtemp(prefix="tv-two-"))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENVAULT_", "PROMETHEUS_"))}
    common = {**base, "TOKENVAULT_WORKERS": str(args.workers), "TOKENVAULT_RATE_LIMIT": UNLIMITED,
              "TOKENVAULT_DETOKENIZE_RATE_LIMIT": UNLIMITED}
    processes = Processes()
    url = fresh_postgres(args.database_url)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for label, env, count in (("postgresql x2", {**common, "TOKENVAULT_DATA_DIR": str(work / "pg"),
                                                     "TOKENVAULT_DATABASE_URL": url}, 2),
                                  ("sqlite x1", {**common, "TOKENVAULT_DATA_DIR": str(work / "lite")}, 1)):
            cli(tokenvault, env, "init")
            keys = {"tokenize": create_client(tokenvault, env, "checkout"),
                    "detokenize": create_client(tokenvault, env, "payment_gateway")}
            urls = [start_vault(processes, tokenvault, env, work, f"{label[:2]}{i}", args.workers)
                    for i in range(count)]
            tokens = create_tokens(urls[0], keys["tokenize"], 1000)
            read_back(urls[-1], keys["detokenize"], tokens)
            tokens_file = write_tokens(tokens, work / f"tokens-{count}.txt")
            seconds = args.duration if count == 2 else args.sqlite_duration
            table[label] = measure(args, urls, seconds, keys, tokens_file, base)
            processes.stop_all()
    finally:
        processes.stop_all()
        drop_postgres(url)
    print("| setup | endpoint | req/s | p99 ms | errors |\n|---|---|---:|---:|---:|")
    errors = 0
    for label, cases in table.items():
        for case, row in cases.items():
            errors += row["errors"]
            print(f"| {label} | {case} | {row['req_per_s']:,.0f} | {row['p99_ms']:.1f} | {row['errors']} |")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
