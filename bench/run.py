"""Every benchmark of issue #9 in one invocation: `make bench` (= `.venv/bin/python bench/run.py --publish`).

Starts, all at once and each on its own free loopback port: the hello-world Flask ceiling, an OpenBao
dev server, and three vaults (`tokenvault init` + `tokenvault serve`, the same server settings):
SQLite with local keys, SQLite with the Vault provider on that OpenBao, PostgreSQL with local keys
(skipped with a note when PostgreSQL does not answer). Then, after an unrecorded warm-up per case,
runs in alternating rounds (forward, reverse, ...): hello; single-item tokenize and detokenize on
each vault; batch tokenize and detokenize of 1,000 items per request (SQLite, local); OpenBao
transit/encrypt on the dev server, and KV v2 write and read of one PAN per request on the issue #21 peer
(OpenBao with raft storage and a declared file audit device: bench/harness/peer.py); the raw limit
(bench/raw_limit.py). `--compare DIR` adds the SQLite-local and PostgreSQL vaults run from an older checkout.
After the rounds: the audit chain cost (bench/audit_chain_cost.py, short), the erasure epoch's rewrap
rate and the subject-key locks' cost (bench/epoch_and_locks.py, issue #17), the relay's overhead over
calling the same HTTPS upstream directly (bench/relay_overhead.py, issue #20), the row-MAC cost on single-item
tokenize and detokenize (bench/row_mac_cost.py, issue #15), a top-up of the SQLite-local
vault to 100,000 tokens, and each server worker's resident memory.

Writes bench/results/<UTC date-time>.json, .md and .png (git-ignored); --publish also copies the
Markdown and the chart to docs/bench/latest.md and latest.png. Exit 0, 1 if any HTTP or item error
happened during a measured run (or a side measurement failed), 2 if the run could not be done.
Every server is stopped and the temp dir removed on any exit, including Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import chart, report
from bench.harness.cases import build_cases, run_rounds, summarise, warm_up
from bench.harness.extras import (
    audit_chain_cost,
    epoch_and_locks,
    relay_overhead,
    row_mac_cost,
    top_up,
    worker_memory,
)
from bench.harness.procs import (
    RESULTS,
    ROOT,
    BenchError,
    exit_with,
    find_tokenvault,
    git_revision,
    install_signal_handlers,
    venv_python,
)
from bench.harness.setups import Stack, start
from bench.harness.vaultdata import BATCH, UNLIMITED, tokens_created
from bench.harness.wrk import require_wrk, wrk_version

DOCS = ROOT / "docs" / "bench"
QUICK = {"duration": 2, "batch_duration": 2, "rounds": 1, "warmup": 1, "tokens": 2000, "raw_items": 10_000,
         "audit_rounds": 1, "audit_ops": 50, "min_tokens": 0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=int, default=30, help="seconds of measured load per single-item/peer case (default 30)")
    add("--batch-duration", type=int, default=45, help="seconds of measured load per batch case (default 45)")
    add("--rounds", type=int, default=3, help="alternating rounds each case's duration is split over (default 3)")
    add("--warmup", type=int, default=2, help="unrecorded seconds per case before the rounds (default 2)")
    add("--connections", type=int, default=32, help="wrk -c for single-item and peer cases (default 32)")
    add("--threads", type=int, default=2, help="wrk -t (default 2)")
    add("--batch-connections", type=int, default=4, help="wrk -c for the batch cases (default 4)")
    add("--workers", type=int, default=2, help="worker processes of every server (default 2)")
    add("--tokens", type=int, default=5000, help="card tokens made per vault before measuring, read by "
                                                "the detokenize cases (default 5000, at least 1000)")
    add("--raw-items", type=int, default=50_000, help="items per raw-limit run, one run per round (default 50000)")
    add("--audit-rounds", type=int, default=3, help="audit chain cost rounds (default 3)")
    add("--audit-ops", type=int, default=200, help="audit chain cost tokenize calls per round and side (default 200)")
    add("--min-tokens", type=int, default=report.RSS_TOKENS,
        help="top the SQLite-local vault up to this many tokens before reading memory (default 100000)")
    add("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server for the postgres setup; a fresh database is created next to it and dropped")
    add("--no-postgres", action="store_true", help="skip the PostgreSQL cases")
    add("--cases", default="*", help="comma-separated fnmatch patterns of case keys (op@setup) to run, "
                                     "e.g. 'hello@*,tokenize@sqlite-local' (default: all)")
    add("--relay-duration", type=int, default=10, help="seconds per relay overhead case (default 10)")
    add("--relay-concurrency", type=int, default=8, help="client threads of the relay overhead cases (default 8)")
    add("--no-extras", action="store_true", help="skip the audit chain cost, the relay overhead and the memory top-up")
    add("--quick", action="store_true", help="smoke run: every case for 1-2 s, one round, no memory top-up")
    add("--real-rate-limits", action="store_true",
        help=f"keep the vault's default per-client rate limits (by default raised to {UNLIMITED})")
    add("--compare", type=Path, metavar="DIR",
        help="also run the SQLite-local and PostgreSQL vaults from DIR, a checkout of the code before a change "
             "(e.g. `git worktree add --detach DIR main`), as <setup>-before: before/after in one run")
    add("--publish", action="store_true", help="copy the Markdown and chart to docs/bench/latest.md and latest.png")
    add("--keep", action="store_true", help="keep the temp dir with every server's log")
    add("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    if min(args.duration, args.batch_duration, args.rounds, args.threads, args.workers) < 1:
        parser.error("durations, rounds, threads and workers must be at least 1")
    if args.connections < args.threads or args.batch_connections < 1 or args.tokens < BATCH:
        parser.error(f"need connections >= threads, batch connections >= 1 and --tokens >= {BATCH}")
    return args


def measure_memory(stack: Stack, min_tokens: int) -> dict[str, Any]:
    memory: dict[str, Any] = {}
    local = stack.vaults.get("sqlite-local")
    if local is not None and local.service is not None and min_tokens:
        memory_top_up = top_up(local.service, local.checkout_key, min_tokens)
        print(f"top-up: {memory_top_up['added']:,} tokens in {memory_top_up['seconds']:.1f} s", file=sys.stderr)
    for name, setup in stack.vaults.items():
        assert setup.service is not None
        memory[name] = {**worker_memory(setup.service), "tokens_created": tokens_created(setup.service.url)}
    if stack.hello is not None:
        memory["hello"] = {**worker_memory(stack.hello), "tokens_created": None}
    return memory


def measure_audit(stack: Stack, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    urls: dict[str, str | None] = {"sqlite": None}
    if "postgres" in stack.vaults:
        urls["postgresql"] = args.postgres_url
    out: dict[str, Any] = {}
    for engine, url in urls.items():
        try:
            out[engine] = audit_chain_cost(stack.python, args.audit_rounds, args.audit_ops, url)
        except BenchError as error:
            out[engine] = {"engine": engine, "error": "failed"}
            notes.append(f"audit chain cost on {engine} failed: {error}")
    return out


def measure_row_macs(stack: Stack, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    urls: dict[str, str | None] = {"sqlite": None}
    if "postgres" in stack.vaults:
        urls["postgresql"] = args.postgres_url
    rounds, requests = (2, 50) if args.quick else (8, 300)
    out: dict[str, Any] = {}
    for engine, url in urls.items():
        try:
            out[engine] = row_mac_cost(stack.python, rounds, requests, url)
        except BenchError as error:
            out[engine] = {"engine": engine, "error": "failed"}
            notes.append(f"row MAC cost on {engine} failed: {error}")
    return out


def measure_epochs(stack: Stack, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    urls: dict[str, str | None] = {"sqlite": None}
    if "postgres" in stack.vaults:
        urls["postgresql"] = args.postgres_url
    out: dict[str, Any] = {}
    for engine, url in urls.items():
        try:
            out[engine] = epoch_and_locks(stack.python, url, 2000 if args.quick else 50_000)
        except BenchError as error:
            out[engine] = {"engine": engine, "error": "failed"}
            notes.append(f"epoch and lock cost on {engine} failed: {error}")
    return out


def measure_relay(stack: Stack, args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    try:
        return relay_overhead(stack.python, 2 if args.quick else args.relay_duration, args.relay_concurrency)
    except BenchError as error:
        notes.append(f"relay overhead failed: {error}")
        return {"error": "failed"}


def save(record: dict[str, Any], args: argparse.Namespace, work: Path) -> None:
    stamp = datetime.fromisoformat(record["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    folder = work if args.no_save else RESULTS
    folder.mkdir(exist_ok=True)
    title = f"TokenVault bench {record['started_at'][:16].replace('T', ' ')} UTC, {record['machine']['cpus']} CPUs"
    png = chart.draw(record["summary"], folder / f"{stamp}.png", title)
    md = folder / f"{stamp}.md"
    md.write_text(report.markdown(record, png.name), encoding="utf-8")
    data = folder / f"{stamp}.json"
    data.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if not args.no_save:
        print(f"wrote {data.relative_to(ROOT)}, {md.name}, {png.name}", file=sys.stderr)
    if args.publish:
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS / "latest.png")
        (DOCS / "latest.md").write_text(report.markdown(record, "latest.png"), encoding="utf-8")
        print(f"published {(DOCS / 'latest.md').relative_to(ROOT)} and latest.png", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_wrk()
    tokenvault = find_tokenvault()
    install_signal_handlers()
    work = Path(tempfile.mkdtemp(prefix="tokenvault-bench-"))
    stack = Stack(work, tokenvault, venv_python(tokenvault), args.workers, args.real_rate_limits)
    started_at, clock, load_before = datetime.now(UTC), time.monotonic(), os.getloadavg()
    revision = git_revision()  # of the code the servers start with, not whatever is committed meanwhile
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs before the run; "
              "other work on this machine will lower every figure", file=sys.stderr)
    try:
        print(f"temp dir {work}; starting every server", file=sys.stderr)
        start(stack, postgres_url=None if args.no_postgres else args.postgres_url, tokens=args.tokens,
              compare=args.compare.resolve() if args.compare else None)
        notes = list(stack.notes)
        patterns = [p.strip() for p in args.cases.split(",") if p.strip()]
        cases = [c for c in build_cases(stack, args, stack.python)
                 if any(fnmatch.fnmatchcase(c.key, p) for p in patterns)]
        if not cases:
            raise BenchError(f"--cases {args.cases!r} matches no case")
        print(f"{time.monotonic() - clock:.0f} s: servers up, {args.tokens:,} tokens per vault; warming up "
              f"{len(cases)} cases", file=sys.stderr)
        warm_up(cases, args.warmup)
        runs = run_rounds(cases, args.rounds)
        summary = summarise(cases, runs)
        audit = {} if args.no_extras else measure_audit(stack, args, notes)
        epochs = {} if args.no_extras else measure_epochs(stack, args, notes)
        relay = {} if args.no_extras else measure_relay(stack, args, notes)
        row_macs = {} if args.no_extras else measure_row_macs(stack, args, notes)
        memory = measure_memory(stack, 0 if args.no_extras else args.min_tokens)
        record: dict[str, Any] = {
            "started_at": started_at.isoformat(),
            "command": "python bench/run.py" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)),
            "settings": {"duration": args.duration, "batch_duration": args.batch_duration, "rounds": args.rounds,
                         "warmup": args.warmup, "connections": args.connections, "threads": args.threads,
                         "batch_connections": args.batch_connections, "batch_items": BATCH, "workers": args.workers,
                         "worker_class": "granian WSGI (api/http/server.py)", "tokens_per_vault": args.tokens,
                         "raw_items": args.raw_items, "audit_rounds": args.audit_rounds, "audit_ops": args.audit_ops,
                         "min_tokens": 0 if args.no_extras else args.min_tokens, "cases": args.cases,
                         "quick": args.quick, "extras": not args.no_extras,
                         "compare": str(args.compare) if args.compare else None,
                         "rate_limits": "defaults" if args.real_rate_limits else UNLIMITED},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "wrk": wrk_version(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "git": revision,
            "summary": summary,
            "targets": report.evaluate(summary, memory, stack.skipped, args.connections),
            "targets_21": report.evaluate_peer(summary, stack.skipped, args.connections),
            "peer_audit_lines": stack.peer.audit_lines() if stack.peer is not None else 0,
            "memory": memory,
            "audit_chain": audit,
            "epochs": epochs,
            "relay": relay,
            "row_macs": row_macs,
            "notes": notes,
            "runs": runs,
            "wall_seconds": time.monotonic() - clock,
        }
        save(record, args, work)
        print()
        print(report.console_summary(record))
        errors = sum(row["http_errors"] + row["item_errors"] for row in summary.values())
        if errors:
            print(f"WARNING: {errors} errors during the measured runs; rerun with --keep to inspect the server logs",
                  file=sys.stderr)
        failed_side = any("error" in a for a in audit.values()) or "error" in relay
        return 1 if errors or failed_side else 0
    finally:
        stack.close()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    exit_with(main)
