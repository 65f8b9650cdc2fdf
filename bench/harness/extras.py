"""The figures that are not a wrk run: raw limit, audit chain cost, worker memory after N tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness.procs import BENCH, BenchError, Service, rss_mb, worker_pids
from bench.harness.vaultdata import create_tokens, tokens_created


def _json_script(python: Path, script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    """Run `bench/<script> ... --json` in its own interpreter and return what it printed."""
    argv = [str(python), str(BENCH / script), *args, "--json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=BENCH.parent)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{script} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"{script} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def raw_limit(python: Path, items: int) -> dict[str, Any]:
    """One run of bench/raw_limit.py (every mode once); items/s per mode, `encrypt+insert` the raw limit."""
    started = time.perf_counter()
    result = _json_script(python, "raw_limit.py", "--items", str(items), "--repeat", "1")
    return {"items": items, "items_per_sec": result["items_per_sec"], "wall_s": time.perf_counter() - started}


def audit_chain_cost(python: Path, rounds: int, ops: int, database_url: str | None) -> dict[str, Any]:
    """bench/audit_chain_cost.py's measurement (in-process service, chained vs unchained trail)."""
    args = ["--rounds", str(rounds), "--ops", str(ops)]
    if database_url:
        args += ["--database-url", database_url]
    return _json_script(python, "audit_chain_cost.py", *args)


def row_mac_cost(python: Path, rounds: int, requests: int, database_url: str | None) -> dict[str, Any]:
    """bench/row_mac_cost.py (issue #15): CPU per single-item request with and without row-MAC checks."""
    args = ["--rounds", str(rounds), "--requests", str(requests)]
    if database_url:
        args += ["--database-url", database_url]
    return _json_script(python, "row_mac_cost.py", *args, timeout=600)


def epoch_and_locks(python: Path, database_url: str | None, keys: int) -> dict[str, Any]:
    """bench/epoch_and_locks.py (issue #17): erasure-epoch rewrap rate and the cost of the subject-key locks."""
    args = ["--keys", str(keys)]
    if database_url:
        args += ["--database-url", database_url]
    return _json_script(python, "epoch_and_locks.py", *args, timeout=600)


def relay_overhead(python: Path, duration: float, concurrency: int) -> dict[str, Any]:
    """bench/relay_overhead.py (issue #20): one HTTPS upstream called directly and through the relay."""
    return _json_script(python, "relay_overhead.py", "--duration", str(duration), "--concurrency",
                        str(concurrency), timeout=120 + 6 * (duration + 2))


def top_up(service: Service, checkout_key: str, minimum: int) -> dict[str, Any]:
    """Batch-tokenize until the server has created at least `minimum` tokens; returns what it took."""
    before = tokens_created(service.url)
    started = time.perf_counter()
    missing = max(0, minimum - before)
    if missing:
        print(f"topping up {service.name}: {before:,} tokens, {missing:,} more to reach {minimum:,}", file=sys.stderr)
        create_tokens(service.url, checkout_key, missing, parallel=4)
    return {"tokens_before": before, "added": missing, "seconds": time.perf_counter() - started}


def worker_memory(service: Service) -> dict[str, Any]:
    """VmRSS of each server worker of `service` (children of its master), in MB."""
    pids = worker_pids(service.process.pid)
    sizes = {pid: rss_mb(pid) for pid in pids}
    known = {pid: size for pid, size in sizes.items() if size is not None}
    return {"master_pid": service.process.pid, "master_rss_mb": rss_mb(service.process.pid),
            "workers": len(known), "worker_rss_mb": {str(pid): round(size, 1) for pid, size in known.items()},
            "max_worker_rss_mb": max(known.values()) if known else None}
