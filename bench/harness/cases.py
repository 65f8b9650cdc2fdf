"""The measured cases, their unrecorded warm-up, and the alternating rounds.

Every case is one wrk Lua script against one server (or, for the raw limit, one run of
bench/raw_limit.py). Round 1 runs the cases in order, round 2 in reverse, and so on, so drift
(other load, turbo, a warming page cache) hits every case alike.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import peer
from bench.harness.extras import raw_limit
from bench.harness.setups import PEER_KEY, Stack
from bench.harness.vaultdata import BATCH, diff, item_errors, kms_calls, vault_counters
from bench.harness.wrk import run_wrk

# op -> (what one request does, unit of the throughput that matters)
OPS: dict[str, tuple[str, str]] = {
    "hello": ("hello-world Flask JSON POST (ceiling)", "req"),
    "tokenize": ("POST /v1/tokens, 1 card", "req"),
    "tokenize_close": ("POST /v1/tokens, 1 card, new connection per request", "req"),
    "detokenize": ("POST /v1/detokenize, 1 token", "req"),
    "batch_tokenize": (f"POST /v1/tokens/batch, {BATCH:,} cards", "items"),
    "batch_detokenize": (f"POST /v1/detokenize, {BATCH:,} tokens", "items"),
    "transit_encrypt": ("OpenBao transit/encrypt, 1 PAN", "req"),
    "kv_write": ("OpenBao KV v2 write, 1 PAN", "req"),
    "kv_read": ("OpenBao KV v2 read, 1 PAN", "req"),
    "raw_limit": ("AES-256-GCM + SQLite bulk insert, no HTTP", "items"),
}


@dataclass
class Case:
    op: str
    setup: str
    seconds: float  # per measured run
    script: str = ""
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    script_args: list[str] = field(default_factory=list)
    connections: int = 32
    threads: int = 2
    items_per_request: int = 1
    metrics_url: str | None = None  # the vault whose /metrics counts item errors and KMS calls
    timeout: int = 10
    runner: Callable[[], dict[str, Any]] | None = None  # not wrk: the raw limit

    @property
    def key(self) -> str:
        return f"{self.op}@{self.setup}"

    def settings(self) -> dict[str, Any]:
        if self.runner is not None:
            return {"seconds_per_run": None, "kind": "in-process"}
        return {"script": f"bench/wrk/{self.script}.lua", "threads": self.threads, "connections": self.connections,
                "seconds_per_run": self.seconds, "items_per_request": self.items_per_request,
                "timeout_s": self.timeout}


def build_cases(stack: Stack, args: Any, python: Path) -> list[Case]:
    """hello, then per vault setup tokenize/detokenize, batches on SQLite local, the peer, the raw limit."""
    assert stack.hello is not None and stack.openbao is not None and stack.peer is not None
    single = args.duration / args.rounds
    batch = args.batch_duration / args.rounds
    common = {"threads": args.threads, "connections": args.connections}
    cases = [Case("hello", "hello", single, "hello", stack.hello.url, dict(stack.base), **common)]
    for name, setup in stack.vaults.items():
        assert setup.service is not None and setup.tokens_file is not None
        url = setup.service.url
        checkout = {**stack.base, "BENCH_API_KEY": setup.checkout_key}
        gateway = {**stack.base, "BENCH_API_KEY": setup.gateway_key}
        cases += [Case("tokenize", name, single, "tokenize", url, checkout, metrics_url=url, **common),
                  Case("detokenize", name, single, "detokenize", url, gateway, [str(setup.tokens_file)],
                       metrics_url=url, **common)]
        if name in ("sqlite-local", "sqlite-local-before"):
            # wrk keeps each connection alive; this one closes it after every request (issue #21).
            cases.append(Case("tokenize_close", name, single, "tokenize_close", url, checkout, metrics_url=url,
                              **common))
            batch_common = {"threads": min(args.threads, args.batch_connections),
                            "connections": args.batch_connections, "items_per_request": BATCH,
                            "metrics_url": url, "timeout": 60}
            cases += [Case("batch_tokenize", name, batch, "batch_tokenize", url, checkout, [str(BATCH)],
                           **batch_common),
                      Case("batch_detokenize", name, batch, "batch_detokenize", url, gateway,
                           [str(setup.tokens_file), str(BATCH)], **batch_common)]
    peer_env = {**stack.base, "BENCH_VAULT_TOKEN": stack.openbao.root_token}
    # Issue #21's peer: raft storage and a file audit device (bench/harness/peer.py).
    raft_env = {**stack.base, "BENCH_VAULT_TOKEN": stack.peer.root_token}
    assert stack.peer.paths_file is not None
    cases += [Case("transit_encrypt", "openbao", single, "transit_encrypt", stack.openbao.addr, peer_env,
                   [PEER_KEY], **common),
              Case("kv_write", "openbao-raft", single, "kv_write", stack.peer.addr, raft_env, [peer.MOUNT],
                   **common),
              Case("kv_read", "openbao-raft", single, "kv_read", stack.peer.addr, raft_env,
                   [str(stack.peer.paths_file), peer.MOUNT], **common),
              Case("raw_limit", "in-process", 0, runner=lambda: raw_limit(python, args.raw_items))]
    return cases


def run_case(case: Case, seconds: float | None = None) -> dict[str, Any]:
    """One run; for a vault, also its item errors and KMS calls from /metrics before and after."""
    if case.runner is not None:
        result = case.runner()
    else:
        before = vault_counters(case.metrics_url) if case.metrics_url else None
        result = run_wrk(case.script, case.url, seconds if seconds is not None else case.seconds,
                         threads=case.threads, connections=case.connections, env=case.env,
                         script_args=case.script_args, timeout=case.timeout)
        if before is not None and case.metrics_url:
            changes = diff(vault_counters(case.metrics_url), before)
            result.update(vault_counters=changes, item_errors=item_errors(changes), kms_calls=kms_calls(changes))
        result["items"] = result["requests"] * case.items_per_request
    result.update(case=case.key, op=case.op, setup=case.setup)
    return result


def describe(run: dict[str, Any]) -> str:
    if run["op"] == "raw_limit":
        return f"{run['items_per_sec']['encrypt+insert']:,.0f} items/s (encrypt+insert)"
    text = f"{run['requests_per_sec']:,.1f} req/s, p99 {run['latency_us']['p99'] / 1000:.1f} ms"
    errors = run["http_errors"] + run.get("item_errors", 0)
    return text + (f", {errors} ERRORS" if errors else "")


def warm_up(cases: list[Case], seconds: float) -> None:
    for case in cases:
        if case.runner is None and seconds > 0:
            run_case(case, seconds)


def run_rounds(cases: list[Case], rounds: int) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    for number in range(rounds):
        order = cases if number % 2 == 0 else cases[::-1]
        for case in order:
            result = run_case(case)
            result["round"] = number + 1
            runs.append(result)
            print(f"round {number + 1}/{rounds} {case.key:>30}: {describe(result)}", file=sys.stderr)
    return runs


def summarise(cases: list[Case], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: req/s over all its runs (total requests / total time), items/s = req/s x items per request,
    p50/p99 the median of its runs; the raw limit its best run per mode."""
    out: dict[str, dict[str, Any]] = {}
    for case in cases:
        mine = [r for r in runs if r["case"] == case.key]
        if not mine:
            continue
        row: dict[str, Any] = {"op": case.op, "setup": case.setup, "runs": len(mine), **case.settings()}
        if case.runner is not None:
            modes = {m: max(r["items_per_sec"][m] for r in mine) for m in mine[0]["items_per_sec"]}
            row.update(items_per_sec=modes["encrypt+insert"], modes_items_per_sec=modes,
                       items_per_run=mine[0]["items"], requests_per_sec=None, p50_ms=None, p99_ms=None,
                       http_errors=0, item_errors=0, kms_calls=None)
        else:
            seconds = sum(r["duration_us"] for r in mine) / 1e6
            requests_total = sum(r["requests"] for r in mine)
            rate = requests_total / seconds if seconds else 0.0
            row.update(requests=requests_total, seconds=seconds, requests_per_sec=rate,
                       items=sum(r["items"] for r in mine), items_per_sec=rate * case.items_per_request,
                       p50_ms=statistics.median(r["latency_us"]["p50"] for r in mine) / 1000,
                       p99_ms=statistics.median(r["latency_us"]["p99"] for r in mine) / 1000,
                       http_errors=sum(r["http_errors"] for r in mine),
                       item_errors=sum(r.get("item_errors", 0) for r in mine),
                       kms_calls=sum(r.get("kms_calls", 0) for r in mine) if case.metrics_url else None)
        out[case.key] = row
    hello = out.get("hello@hello", {}).get("requests_per_sec")
    raw = out.get("raw_limit@in-process", {}).get("items_per_sec")
    for row in out.values():
        unit = OPS[row["op"]][1]
        if row["op"] == "raw_limit":
            row["ratio"], row["ratio_to"] = None, None
        elif unit == "items":
            row["ratio"], row["ratio_to"] = (row["items_per_sec"] / raw if raw else None), "raw"
        else:
            row["ratio"], row["ratio_to"] = (row["requests_per_sec"] / hello if hello else None), "hello"
    return out
