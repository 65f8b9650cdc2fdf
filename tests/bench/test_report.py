"""bench/run.py's arithmetic and report on synthetic runs: no servers, no wrk (the real run is `make bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.harness import report
from bench.harness.cases import Case, summarise
from bench.harness.wrk import parse_wrk

WRK_OUT = """Running 2s test @ http://127.0.0.1:1
  2 threads and 32 connections
  Non-2xx or 3xx responses: 3
WRK_JSON {"requests":2000,"duration_us":2000000,"bytes":1,"errors":{"connect":0,"read":1,"write":0,"status":3,\
"timeout":0},"latency_us":{"mean":1.0,"stdev":1.0,"max":9000,"p50":4000,"p90":8000,"p99":20000,"p999":30000}}
"""


def wrk_run(case: Case, requests: int, seconds: float, p50_ms: float, p99_ms: float, **extra: Any) -> dict[str, Any]:
    return {"case": case.key, "op": case.op, "setup": case.setup, "requests": requests,
            "duration_us": int(seconds * 1e6), "items": requests * case.items_per_request, "http_errors": 0,
            "latency_us": {"p50": p50_ms * 1000, "p99": p99_ms * 1000}, **extra}


def test_parse_wrk_counts_status_and_socket_errors() -> None:
    stats = parse_wrk("tokenize", WRK_OUT)
    assert stats["requests_per_sec"] == pytest.approx(1000)
    assert stats["http_errors"] == 4 and stats["non_2xx_3xx"] == 3


def synthetic() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    hello = Case("hello", "hello", 1)
    tok = Case("tokenize", "sqlite-local", 1, metrics_url="x")
    det = Case("detokenize", "sqlite-local", 1, metrics_url="x")
    batch = Case("batch_tokenize", "sqlite-local", 1, items_per_request=1000, metrics_url="x")
    transit = Case("transit_encrypt", "openbao", 1)
    kv_write = Case("kv_write", "openbao-raft", 1)
    kv_read = Case("kv_read", "openbao-raft", 1)
    before = Case("tokenize", "sqlite-local-before", 1, metrics_url="x")
    raw = Case("raw_limit", "in-process", 0, runner=dict)
    runs = [wrk_run(hello, 1000, 1, 5, 8), wrk_run(hello, 3000, 1, 5, 10),  # 2,000 req/s over both runs
            wrk_run(tok, 1400, 1, 20, 24, kms_calls=1, item_errors=0),
            wrk_run(det, 1000, 1, 30, 40, kms_calls=0, item_errors=2),
            wrk_run(batch, 30, 1, 100, 200, kms_calls=0, item_errors=0),
            wrk_run(transit, 5000, 1, 1, 3),
            wrk_run(kv_write, 1000, 1, 10, 60), wrk_run(kv_read, 2500, 1, 5, 30),
            wrk_run(before, 1000, 1, 25, 30, kms_calls=0, item_errors=0),
            {"case": raw.key, "op": "raw_limit", "setup": "in-process", "items": 50_000,
             "items_per_sec": {"encrypt+insert": 90_000.0}},
            {"case": raw.key, "op": "raw_limit", "setup": "in-process", "items": 50_000,
             "items_per_sec": {"encrypt+insert": 100_000.0}}]
    summary = summarise([hello, tok, det, batch, transit, kv_write, kv_read, before, raw], runs)
    memory = {"sqlite-local": {"workers": 2, "worker_rss_mb": {"1": 90.0, "2": 120.0}, "max_worker_rss_mb": 120.0,
                               "tokens_created": 100_000}}
    return summary, memory


def test_summary_ratios_and_targets() -> None:
    summary, memory = synthetic()
    assert summary["hello@hello"]["requests_per_sec"] == pytest.approx(2000)
    assert summary["hello@hello"]["p99_ms"] == pytest.approx(9)  # median of the runs
    assert summary["tokenize@sqlite-local"]["ratio"] == pytest.approx(0.7)
    assert summary["batch_tokenize@sqlite-local"]["items_per_sec"] == pytest.approx(30_000)
    assert summary["raw_limit@in-process"]["items_per_sec"] == 100_000  # best run
    assert summary["batch_tokenize@sqlite-local"]["ratio"] == pytest.approx(0.3)

    targets = report.evaluate(summary, memory, {"postgres": "PostgreSQL cases skipped: unreachable"}, 32)
    met = {(t["key"], t["setup"]): t["met"] for t in targets}
    assert met[("tokenize_vs_hello", "sqlite-local")] is True
    assert met[("tokenize_p99", "sqlite-local")] is True
    assert met[("detokenize_vs_hello", "sqlite-local")] is False
    assert met[("detokenize_p99", "sqlite-local")] is False
    assert met[("tokenize_vs_hello", "postgres")] is None
    assert met[("batch_tokenize_vs_raw", "sqlite-local")] is True
    assert met[("batch_tokenize_vs_transit", "sqlite-local")] is True
    assert met[("batch_detokenize_vs_raw", "sqlite-local")] is None
    assert met[("kms_per_1000", "sqlite-local")] is True  # 1 call / 32,400 items
    assert met[("rss_per_worker", "sqlite-local")] is True
    assert met[("postgres_tokenize_vs_hello", "postgres")] is None
    memory["sqlite-local"]["tokens_created"] = 99_999
    targets = report.evaluate(summary, memory, {}, 32)
    assert next(t for t in targets if t["key"] == "rss_per_worker")["met"] is None


def test_peer_targets_of_issue_21() -> None:
    summary, _memory = synthetic()
    targets = report.evaluate_peer(summary, {"postgres": "PostgreSQL cases skipped: unreachable"}, 32)
    by_key = {(t["key"], t["setup"]): t for t in targets}
    # tokenize 1,400 req/s against the peer's KV write 1,000: 1.4 x, met; detokenize 1,000 against 2,500: 0.4 x.
    assert by_key[("tokenize_vs_peer", "sqlite-local")]["value"] == pytest.approx(1.4)
    assert by_key[("tokenize_vs_peer", "sqlite-local")]["met"] is True
    assert by_key[("detokenize_vs_peer", "sqlite-local")]["met"] is False
    assert by_key[("tokenize_vs_hello_21", "sqlite-local")]["met"] is True  # 0.7 x hello >= 0.4
    assert by_key[("tokenize_vs_peer", "postgres")]["met"] is None
    assert by_key[("tokenize_vs_peer", "postgres")]["required"] == f"≥ 0.8 {report.X}"
    assert by_key[("batch_tokenize_vs_raw", "sqlite-local")]["met"] is True  # 0.3 x >= 0.15
    assert by_key[("batch_tokenize_vs_transit", "sqlite-local")]["met"] is True  # 30,000 / 5,000 = 6 x
    assert by_key[("batch_detokenize_vs_raw", "sqlite-local")]["met"] is None


def test_compare_table_puts_before_next_to_after() -> None:
    summary, _memory = synthetic()
    table = report.compare_table(summary)
    assert table is not None
    assert f"| 1,000.0 | 1,400.0 | 1.40 {report.X} |" in table


def test_markdown_and_chart(tmp_path: Path) -> None:
    from bench.harness import chart

    summary, memory = synthetic()
    record = {"started_at": "2026-01-02T03:04:05+00:00", "command": "python bench/run.py", "git": "abc",
              "settings": {"rounds": 2, "warmup": 2, "threads": 2, "connections": 32, "duration": 4,
                           "batch_items": 1000, "batch_connections": 4, "batch_duration": 4, "workers": 2,
                           "min_tokens": 100_000},
              "machine": {"cpus": 2, "platform": "Linux", "python": "3.11", "wrk": "wrk 4",
                          "loadavg_before": (0.1, 0.2, 0.3), "loadavg_after": (1.0, 1.0, 1.0)},
              "summary": summary, "targets": report.evaluate(summary, memory, {}, 32), "memory": memory,
              "targets_21": report.evaluate_peer(summary, {}, 32), "peer_audit_lines": 7,
              "audit_chain": {"sqlite": {"engine": "sqlite", "chained_ops_per_sec": 900.0,
                                         "unchained_ops_per_sec": 1000.0, "cost": 0.1}},
              "row_macs": {"sqlite": {"engine": "sqlite", "tokenize": {"cpu_ms_with_macs": 4.2,
                                                                       "cpu_ms_without_macs": 4.0, "cost": 0.05},
                                      "detokenize": {"cpu_ms_with_macs": 4.1, "cpu_ms_without_macs": 4.0,
                                                     "cost": 0.025}}},
              "notes": ["PostgreSQL cases skipped"], "wall_seconds": 12.0}
    text = report.markdown(record, "latest.png")
    assert "![throughput and latency per case](latest.png)" in text
    assert "| **2** (0 HTTP, 2 item) |" in text
    assert "## Targets (issue #21" in text and "OpenBao KV write (raft + audit)" in text
    assert "## Before and after (--compare)" in text
    assert "**not met**" in text and "10.0%" in text and "load average 0.10 / 0.20 / 0.30 before" in text
    assert "## Row MAC cost (issue #15)" in text and "| sqlite | single tokenize | 4.20 | 4.00 | +5.0% |" in text
    png = chart.draw(summary, tmp_path / "chart.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
