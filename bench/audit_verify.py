"""Audit verification rate: events verified per second, full and incremental.

Writes N events in batches of 1,000 (one chain), anchors them, times a full verification job
(wall and CPU time: the machine may be shared), then 1,000 more events and an incremental run.
Run: .venv/bin/python bench/audit_verify.py [--events 200000] [--database-url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.embedded import discard, fresh_vault
from vault.audit.trail import AuditEvent, Origin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts, url = fresh_vault(args.database_url, "tv-bench-verify-", TOKENVAULT_AUDIT_CHECKPOINT_SECONDS="3600")
    try:
        origin = Origin(request_id="req-0123456789", source="203.0.113.7", user_agent="bench/1.0")
        event = AuditEvent(at=datetime.now(UTC), actor="client_0123456789abcdef", role="payment_gateway",
                           action="detokenize", outcome="allowed", token="4111110000000000", kind="card",
                           purpose="payment", detail="items=1", origin=origin)
        written = 0
        started = time.perf_counter()
        while written < args.events:
            with parts.engine.begin() as conn:
                parts.trail.record(conn, [event] * 1000)
            written += 1000
        write_seconds = time.perf_counter() - started
        parts.trail.checkpoint()
        started, cpu = time.perf_counter(), time.process_time()
        report = parts.audit_log.run_job(parts.audit_log.start_local_job("bench"), full=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        assert report is not None and report.intact and report.anchored, report
        with parts.engine.begin() as conn:  # a day's worth of new events, then the incremental run
            parts.trail.record(conn, [event] * 1000)
        parts.trail.checkpoint()
        started = time.perf_counter()
        again = parts.audit_log.run_job(parts.audit_log.start_local_job("bench"))
        incremental_seconds = time.perf_counter() - started
        assert again is not None and again.intact and again.incremental, again
        result = {"events": report.events, "database": url.split(":")[0], "verify_seconds": round(seconds, 3),
                  "events_per_second": round(report.events / seconds),
                  # CPU time of this one-threaded walk: the rate on an otherwise idle core.
                  "events_per_cpu_second": round(report.events / cpu_seconds),
                  "incremental_events": again.events, "incremental_seconds": round(incremental_seconds, 3),
                  "write_events_per_second": round(written / write_seconds), "load_average": os.getloadavg()[0]}
        print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    finally:
        discard(parts, url)


if __name__ == "__main__":
    main()
