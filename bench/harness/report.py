"""Targets of issues #9 and #21 evaluated on one run's summary, and the Markdown report."""

from __future__ import annotations

from typing import Any

from bench.harness.cases import OPS
from bench.harness.setups import SETUP_LABELS

VAULT_SETUPS = ("sqlite-local", "sqlite-vault", "postgres")
RSS_TOKENS = 100_000
RSS_LIMIT_MB = 150.0
X, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash


def _target(key: str, name: str, setup: str, value: float | None, required: str, met: bool | None, shown: str,
            note: str = "") -> dict[str, Any]:
    return {"key": key, "target": name, "setup": setup, "value": value, "measured": shown, "required": required,
            "met": met, "note": note}


def _ratio_target(key: str, name: str, setup: str, numerator: float | None, denominator: float | None,
                  floor: float, what: str, missing: str) -> dict[str, Any]:
    if numerator is None or not denominator:
        return _target(key, name, setup, None, f"≥ {floor:g} {X}", None, "n/a", missing)
    ratio = numerator / denominator
    return _target(key, name, setup, ratio, f"≥ {floor:g} {X}", ratio >= floor,
                   f"{ratio:.2f} {X} ({numerator:,.0f} / {denominator:,.0f} {what})")


def evaluate(summary: dict[str, dict[str, Any]], memory: dict[str, Any], skipped: dict[str, str],
             connections: int) -> list[dict[str, Any]]:
    """Every target as a row: measured value, requirement, met (True/False) or None when not measured."""
    def row(op: str, setup: str) -> dict[str, Any]:
        return summary.get(f"{op}@{setup}") or {}

    hello = row("hello", "hello").get("requests_per_sec")
    out: list[dict[str, Any]] = []
    for setup in VAULT_SETUPS:
        missing = skipped.get(setup, "not measured")
        for op in ("tokenize", "detokenize"):
            figures = row(op, setup)
            out.append(_ratio_target(f"{op}_vs_hello", f"single {op} req/s ≥ 0.6 {X} hello", setup,
                                     figures.get("requests_per_sec"), hello, 0.6, "req/s", missing))
            name = f"single {op} p99 < 25 ms at -c32"
            if not figures:
                out.append(_target(f"{op}_p99", name, setup, None, "< 25 ms", None, "n/a", missing))
                continue
            note = "" if connections == 32 else f"measured at -c{connections}, not 32"
            out.append(_target(f"{op}_p99", name, setup, figures["p99_ms"], "< 25 ms",
                               figures["p99_ms"] < 25 and connections == 32, f"{figures['p99_ms']:.1f} ms", note))
    raw = row("raw_limit", "in-process").get("items_per_sec")
    transit = row("transit_encrypt", "openbao").get("requests_per_sec")
    batch_tok = row("batch_tokenize", "sqlite-local").get("items_per_sec")
    batch_det = row("batch_detokenize", "sqlite-local").get("items_per_sec")
    local = "sqlite-local"
    out += [_ratio_target("batch_tokenize_vs_raw", f"batch tokenize items/s ≥ 0.3 {X} raw limit", local,
                          batch_tok, raw, 0.3, "items/s", "not measured"),
            _ratio_target("batch_tokenize_vs_transit", f"batch tokenize items/s ≥ 5 {X} OpenBao transit/encrypt "
                          "req/s", local, batch_tok, transit, 5, "items/s vs req/s", "not measured"),
            _ratio_target("batch_detokenize_vs_raw", f"batch detokenize items/s ≥ 0.5 {X} raw limit", local,
                          batch_det, raw, 0.5, "items/s", "not measured")]
    kms_name = "KMS calls ≤ 1 per 1,000 ops after warm-up"
    for setup in VAULT_SETUPS:
        mine = [r for r in summary.values() if r["setup"] == setup and r.get("kms_calls") is not None]
        if not mine:
            out.append(_target("kms_per_1000", kms_name, setup, None, "≤ 1", None, "n/a",
                               skipped.get(setup, "not measured")))
            continue
        calls, items = sum(r["kms_calls"] for r in mine), sum(r["items"] for r in mine)
        per_k = 1000 * calls / items if items else 0.0
        out.append(_target("kms_per_1000", kms_name, setup, per_k, "≤ 1", per_k <= 1,
                           f"{per_k:.3f} ({calls:,} calls / {items:,} ops)"))
    rss_name = f"RSS < {RSS_LIMIT_MB:.0f} MB per worker after {RSS_TOKENS:,} tokens"
    rss_required = f"< {RSS_LIMIT_MB:.0f} MB"
    figures = memory.get(local) or {}
    if figures.get("max_worker_rss_mb") is None:
        out.append(_target("rss_per_worker", rss_name, local, None, rss_required, None, "n/a", "not measured"))
    else:
        size, tokens = figures["max_worker_rss_mb"], figures["tokens_created"]
        enough = tokens >= RSS_TOKENS
        out.append(_target("rss_per_worker", rss_name, local, size, rss_required,
                           (size < RSS_LIMIT_MB) if enough else None,
                           f"{size:.1f} MB max of {figures['workers']} workers, {tokens:,} tokens",
                           "" if enough else f"only {tokens:,} tokens created"))
    out.append(_ratio_target("postgres_tokenize_vs_hello", f"PostgreSQL single tokenize req/s ≥ 0.4 {X} hello",
                             "postgres", row("tokenize", "postgres").get("requests_per_sec"), hello, 0.4, "req/s",
                             skipped.get("postgres", "not measured")))
    return out


def evaluate_peer(summary: dict[str, dict[str, Any]], skipped: dict[str, str], connections: int,
                  ) -> list[dict[str, Any]]:
    """Issue #21: against the OpenBao raft + file audit peer, the hello ceiling and the raw limit."""
    def row(op: str, setup: str) -> dict[str, Any]:
        return summary.get(f"{op}@{setup}") or {}

    hello = row("hello", "hello").get("requests_per_sec")
    peer = {"tokenize": row("kv_write", "openbao-raft").get("requests_per_sec"),
            "detokenize": row("kv_read", "openbao-raft").get("requests_per_sec")}
    peer_op = {"tokenize": "KV write", "detokenize": "KV read"}
    out: list[dict[str, Any]] = []
    for setup in VAULT_SETUPS:
        missing = skipped.get(setup, "not measured")
        floor = 0.8 if setup == "postgres" else 1.0
        for op in ("tokenize", "detokenize"):
            figures = row(op, setup)
            rate = figures.get("requests_per_sec")
            out.append(_ratio_target(f"{op}_vs_peer", f"single {op} req/s ≥ {floor:g} {X} OpenBao {peer_op[op]} "
                                     "(raft + audit)", setup, rate, peer[op], floor, "req/s", missing))
            out.append(_ratio_target(f"{op}_vs_hello_21", f"single {op} req/s ≥ 0.4 {X} hello", setup, rate, hello,
                                     0.4, "req/s", missing))
            name = f"single {op} p99 < 25 ms at -c32"
            if not figures:
                out.append(_target(f"{op}_p99", name, setup, None, "< 25 ms", None, "n/a", missing))
                continue
            note = "" if connections == 32 else f"measured at -c{connections}, not 32"
            out.append(_target(f"{op}_p99", name, setup, figures["p99_ms"], "< 25 ms",
                               figures["p99_ms"] < 25 and connections == 32, f"{figures['p99_ms']:.1f} ms", note))
    raw = row("raw_limit", "in-process").get("items_per_sec")
    transit = row("transit_encrypt", "openbao").get("requests_per_sec")
    batch_tok = row("batch_tokenize", "sqlite-local").get("items_per_sec")
    batch_det = row("batch_detokenize", "sqlite-local").get("items_per_sec")
    local = "sqlite-local"
    out += [_ratio_target("batch_tokenize_vs_raw", f"batch tokenize items/s ≥ 0.15 {X} raw limit", local,
                          batch_tok, raw, 0.15, "items/s", "not measured"),
            _ratio_target("batch_tokenize_vs_transit", f"batch tokenize items/s ≥ 5 {X} OpenBao transit/encrypt "
                          "req/s", local, batch_tok, transit, 5, "items/s vs req/s", "not measured"),
            _ratio_target("batch_detokenize_vs_raw", f"batch detokenize items/s ≥ 0.25 {X} raw limit", local,
                          batch_det, raw, 0.25, "items/s", "not measured")]
    return out


def compare_table(summary: dict[str, dict[str, Any]]) -> str | None:
    """With --compare: each case of a `<setup>-before` vault next to the same case on `<setup>`."""
    lines = ["| case | setup | before req/s | after req/s | after ÷ before | before p99 ms | after p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, before in summary.items():
        if not before["setup"].endswith("-before"):
            continue
        after = summary.get(key.replace("-before", ""))
        if after is None or not before.get("requests_per_sec"):
            continue
        ratio = after["requests_per_sec"] / before["requests_per_sec"]
        lines.append(f"| {OPS[before['op']][0]} | {SETUP_LABELS.get(after['setup'], after['setup'])} "
                     f"| {_num(before['requests_per_sec'], 1)} | {_num(after['requests_per_sec'], 1)} "
                     f"| {ratio:.2f} {X} | {_num(before['p99_ms'], 1)} | {_num(after['p99_ms'], 1)} |")
    return "\n".join(lines) if len(lines) > 2 else None


def _num(value: float | None, digits: int = 0) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _met(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not evaluated"}[met]


def cases_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| case | setup | req/s | items/s | p50 ms | p99 ms | ratio | errors | KMS calls |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary.values():
        ratio = f"{row['ratio']:.2f} {X} {row['ratio_to']}" if row.get("ratio") is not None else DASH
        errors = row["http_errors"] + row["item_errors"]
        error_text = f"**{errors}** ({row['http_errors']} HTTP, {row['item_errors']} item)" if errors else "0"
        kms = DASH if row.get("kms_calls") is None else str(row["kms_calls"])
        if row["op"] == "raw_limit":
            items_text = _num(row["items_per_sec"])
        else:
            items_text = _num(row["items_per_sec"]) if OPS[row["op"]][1] == "items" else DASH
        lines.append(f"| {OPS[row['op']][0]} | {SETUP_LABELS.get(row['setup'], row['setup'])} "
                     f"| {_num(row['requests_per_sec'], 1 if (row['requests_per_sec'] or 0) < 100 else 0)} "
                     f"| {items_text} | {_num(row['p50_ms'], 2)} | {_num(row['p99_ms'], 2)} | {ratio} "
                     f"| {error_text} | {kms} |")
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | setup | measured | required | result |", "|---|---|---|---|---|"]
    for t in targets:
        result = _met(t["met"]) + (f" ({t['note']})" if t["note"] else "")
        lines.append(f"| {t['target']} | {SETUP_LABELS.get(t['setup'], t['setup'])} | {t['measured']} "
                     f"| {t['required']} | {result} |")
    return "\n".join(lines)


def memory_table(memory: dict[str, Any]) -> str:
    lines = ["| server | workers | max RSS per worker (MB) | RSS per worker (MB) | tokens created |",
             "|---|---:|---:|---|---:|"]
    for name, m in memory.items():
        sizes = ", ".join(f"{v:.1f}" for v in m["worker_rss_mb"].values())
        tokens = DASH if m.get("tokens_created") is None else f"{m['tokens_created']:,}"
        lines.append(f"| {SETUP_LABELS.get(name, name)} | {m['workers']} | {_num(m['max_worker_rss_mb'], 1)} "
                     f"| {sizes} | {tokens} |")
    return "\n".join(lines)


def audit_table(audit: dict[str, Any]) -> str:
    lines = ["| engine | chained ops/s | unchained ops/s | chain cost |", "|---|---:|---:|---:|"]
    for a in audit.values():
        if "error" in a:
            lines.append(f"| {a.get('engine', '?')} | {DASH} | {DASH} | {a['error']} |")
            continue
        lines.append(f"| {a['engine']} | {a['chained_ops_per_sec']:,.0f} | {a['unchained_ops_per_sec']:,.0f} "
                     f"| {a['cost']:.1%} |")
    return "\n".join(lines)


def row_mac_table(costs: dict[str, Any]) -> str:
    lines = ["| engine | request | CPU ms with row MACs | without | cost (goal < 5 %) | checks/request "
             "| derived cost |", "|---|---|---:|---:|---:|---:|---:|"]
    for c in costs.values():
        if "error" in c:
            lines.append(f"| {c.get('engine', '?')} | {DASH} | {DASH} | {DASH} | {c['error']} | {DASH} | {DASH} |")
            continue
        for name in ("tokenize", "detokenize"):
            r = c[name]
            derived = f"{r['derived_cost']:+.2%}" if "derived_cost" in r else DASH
            lines.append(f"| {c['engine']} | single {name} | {r['cpu_ms_with_macs']:.2f} | "
                         f"{r['cpu_ms_without_macs']:.2f} | {r['cost']:+.1%} | {r.get('checks_per_request', DASH)} "
                         f"| {derived} |")
    return "\n".join(lines)


def epoch_table(epochs: dict[str, Any]) -> str:
    lines = ["| engine | epoch: data keys/s (goal ≥ 5,000) | single tokenize: lock cost | batch tokenize: lock cost "
             "(goal < 5 %) |", "|---|---:|---:|---:|"]
    for e in epochs.values():
        if "error" in e:
            lines.append(f"| {e.get('engine', '?')} | {DASH} | {DASH} | {e['error']} |")
            continue
        lines.append(f"| {e['engine']} | {e['epoch']['keys_per_sec']:,} ({e['epoch']['moved']:,} keys) "
                     f"| {e['locks']['single']['cost']:.1%} | {e['locks']['batch']['cost']:.1%} |")
    return "\n".join(lines)


def relay_table(relay: dict[str, Any]) -> str:
    if "error" in relay:
        return f"relay overhead: {relay['error']}"
    cases = relay["cases"]
    direct = cases["direct"]
    lines = ["| relay case | req/s | p50 ms | p99 ms | req/s ÷ direct | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, c in cases.items():
        lines.append(f"| {name} | {c['rps']:,.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} "
                     f"| {c['rps'] / direct['rps']:.2f} | {c['errors']:.0f} |")
    return "\n".join(lines)


def machine_line(record: dict[str, Any]) -> str:
    m = record["machine"]
    before, after = m["loadavg_before"], m["loadavg_after"]
    return (f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}, {m['wrk']}; load average "
            f"{before[0]:.2f} / {before[1]:.2f} / {before[2]:.2f} before, {after[0]:.2f} / {after[1]:.2f} / "
            f"{after[2]:.2f} after; git {record['git']}; {record['started_at'][:19].replace('T', ' ')} UTC; "
            f"wall time {record['wall_seconds']:.0f} s.")


def markdown(record: dict[str, Any], image: str | None) -> str:
    s = record["settings"]
    rounds = f"{s['rounds']} alternating rounds" if s["rounds"] > 1 else "1 round"
    top_up = (f"the top-up of the SQLite-local vault to at least {s['min_tokens']:,} tokens" if s["min_tokens"]
              else "no top-up (--min-tokens 0)")
    parts = [f"# TokenVault benchmark, {record['started_at'][:16].replace('T', ' ')} UTC", "",
             f"`{record['command']}`: wrk on loopback, {rounds} after an unrecorded "
             f"{s['warmup']} s warm-up per case; single-item and peer cases -t{s['threads']} -c{s['connections']} "
             f"for {s['duration']} s in total, batches of {s['batch_items']:,} -c{s['batch_connections']} for "
             f"{s['batch_duration']} s; every server under granian (api/http/server.py), {s['workers']} workers, "
             "all running at once.", ""]
    if image:
        parts += [f"![throughput and latency per case]({image})", ""]
    parts += ["## Cases", "", cases_table(record["summary"]), "",
              f"req/s = requests / time over all runs of a case; items/s = req/s {X} items per request; p50/p99 = "
              "median of the runs' wrk percentiles (per request); ratio = req/s ÷ hello req/s, or for batches "
              "items/s ÷ the raw limit (best run of bench/raw_limit.py's AES-256-GCM + SQLite bulk insert); "
              "errors = HTTP status ≥ 400 and socket errors (wrk) plus vault items not `allowed` (/metrics); "
              "KMS calls = key provider calls during the measured runs (/metrics).", "",
              "## Targets (issue #21: the OpenBao raft + audit peer)", "",
              targets_table(record.get("targets_21", [])), "",
              "The peer: `bao server` with raft storage in the run's temp dir and a file audit device declared in "
              "its configuration, initialised and unsealed by the harness (bench/harness/peer.py); KV v2 write of "
              "a new path and read of one of the secrets written before, one PAN per request. "
              f"Audit log lines written by the peer during the run: {record.get('peer_audit_lines', 0):,}.", "",
              "## Targets (issue #9)", "", targets_table(record["targets"]), "",
              "## Memory after the run", "", memory_table(record["memory"]), "",
              f"VmRSS of each server worker (children of the server's master) after every case and {top_up}; "
              "tokens created = allowed tokenize items in the server's /metrics since it started.", "",
              ]
    compared = compare_table(record["summary"])
    if compared:
        parts += ["## Before and after (--compare)", "", compared, "",
                  f"Before: the code in `{s.get('compare')}`, started with the same settings in the same run "
                  "(interleaved rounds).", ""]
    if record["audit_chain"]:
        parts += ["## Audit chain cost", "", audit_table(record["audit_chain"]), "",
                  "In-process tokenize with the chained audit trail against plain audit rows "
                  "(bench/audit_chain_cost.py, short run).", ""]
    if record.get("row_macs"):
        parts += ["## Row MAC cost (issue #15)", "", row_mac_table(record["row_macs"]), "",
                  "The app in-process (Flask test client), one item per request, CPU time per request with the "
                  "row-MAC checks and with them switched off in the bench process only; alternating rounds, "
                  "median of paired ratios (bench/row_mac_cost.py).", ""]
    if record.get("epochs"):
        parts += ["## Erasure epochs and subject-key locks (issue #17)", "", epoch_table(record["epochs"]), "",
                  "Epoch: `start_epoch` + `run` over one data key per subject; lock cost: tokenize for existing "
                  "subjects with the FOR KEY SHARE read against the pre-#17 unlocked reads, alternating rounds, "
                  "median of paired ratios (bench/epoch_and_locks.py).", ""]
    if record.get("relay"):
        parts += ["## Relay overhead (issue #20)", "", relay_table(record["relay"]), "",
                  "The same HTTPS upstream (loopback, own CA) called directly and through `/v1/relay` on a "
                  "SQLite vault with 2 workers, cases one after the other with the same "
                  f"{record['relay'].get('concurrency', '?')} client threads (bench/relay_overhead.py); "
                  "detokenize = `/v1/detokenize` of the same card token, the vault-side floor of relay+card.", ""]
    if record["notes"]:
        parts += ["## Notes", "", *[f"- {note}" for note in record["notes"]], ""]
    parts += [machine_line(record), ""]
    return "\n".join(parts)


def console_summary(record: dict[str, Any]) -> str:
    """What run.py prints on stdout: the two tables and the machine line."""
    audit = [audit_table(record["audit_chain"])] if record["audit_chain"] else []
    compared = compare_table(record["summary"])
    audit += [compared] if compared else []
    audit += [epoch_table(record["epochs"])] if record.get("epochs") else []
    audit += [relay_table(record["relay"])] if record.get("relay") else []
    audit += [row_mac_table(record["row_macs"])] if record.get("row_macs") else []
    return "\n\n".join([cases_table(record["summary"]), targets_table(record.get("targets_21", [])),
                        targets_table(record["targets"]),
                        memory_table(record["memory"]), *audit, *[f"note: {n}" for n in record["notes"]],
                        machine_line(record)])
