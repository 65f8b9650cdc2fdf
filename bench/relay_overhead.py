"""Relay overhead: the same HTTPS upstream called directly and through `/v1/relay`, in one run.

Run: .venv/bin/python bench/relay_overhead.py [--duration 15] [--concurrency 8] [--rounds 2] [--json]
(`make bench` runs it too: bench/run.py, section "Relay overhead").
Starts a real vault (`tokenvault serve`, gunicorn, SQLite, 2 workers) and an HTTPS echo upstream on
loopback with its own CA, then drives, in alternating rounds (forward, reverse) with the same client threads:
  direct        POST https://upstream/v1/charges (TLS verified, keep-alive)
  relay         POST /v1/relay/psp/v1/charges, no template (route, audit, TLS to upstream, protection)
  relay+card    the same with a card token's PAN and expiry filled in (adds the detokenize)
  detokenize    POST /v1/detokenize of that card token: the vault-side floor of relay+card
Prints req/s, p50 and p99 per case and the relay's added latency (with --json: only the figures, as
JSON, on stdout); exits 1 on any error.
The client threads, the upstream and the vault share the machine (2 cores here): compare cases
of one run, not with figures from other machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.server import running_server
from tests.support.upstream import PAN, CertificateAuthority, Upstream


def drive(send: Callable[[requests.Session], int], seconds: float, threads: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        session = requests.Session()
        mine, bad = [], 0
        while time.monotonic() < stop:
            started = time.perf_counter()
            status = send(session)
            mine.append(time.perf_counter() - started)
            bad += status != 200
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, errors[0]


def summary(latencies: list[float], errors: int, seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "rps": len(ordered) / seconds, "errors": errors,
            "p50_ms": statistics.median(ordered) * 1000, "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds the duration is split over")
    parser.add_argument("--json", action="store_true", help="print only the figures, as JSON")
    args = parser.parse_args()
    ca = CertificateAuthority()
    upstream = Upstream(ca).start()
    with tempfile.TemporaryDirectory() as work:
        ca_file = Path(work, "ca.pem")
        ca_file.write_text(ca.pem)
        database = f"sqlite:///{work}/vault.db"
        with running_server(Path(work, "data"), TOKENVAULT_DATABASE_URL=database,
                            TOKENVAULT_RATE_LIMIT="1000000/second", TOKENVAULT_DETOKENIZE_RATE_LIMIT="1000000/second",
                            TOKENVAULT_LOG_LEVEL="warning") as server:
            route = {"name": "psp", "direction": "outbound", "upstream": upstream.url(), "internal": True,
                     "ca_pem": ca.pem, "paths": ["/v1/charges"], "roles": ["payment_gateway"],
                     "purposes": ["payment"], "substitute": {"body": ["card"]},
                     "auth": {"type": "bearer", "bearer": "sk_bench_0123456789abcdef"}}
            server.cli("relay", "routes", "create", "-", stdin=json.dumps(route))
            checkout, gateway = server.client_key("checkout"), server.client_key("payment_gateway")
            card = requests.post(f"{server.url}/v1/tokens", headers={"Authorization": f"Bearer {checkout}"},
                                 json={"kind": "card", "value": {"pan": PAN, "exp_month": 12, "exp_year": 2030}},
                                 timeout=10).json()["token"]
            plain = {"amount": 1000, "currency": "eur", "number": "tok_placeholder", "exp": "12/30"}
            templated = {**plain, "number": f"{{{{tokenvault:{card}:pan}}}}",
                         "exp": f"{{{{tokenvault:{card}:exp_month2}}}}/{{{{tokenvault:{card}:exp_year2}}}}"}
            auth = {"Authorization": f"Bearer {gateway}"}
            relay_url = f"{server.url}/v1/relay/psp/v1/charges"
            cases: dict[str, Callable[[requests.Session], int]] = {
                "direct": lambda s: s.post(f"{upstream.url()}/v1/charges", json=plain, verify=str(ca_file),
                                           headers={"Authorization": "Bearer sk_bench_0123456789abcdef"},
                                           timeout=30).status_code,
                "relay": lambda s: s.post(relay_url, json=plain, headers=auth, timeout=30).status_code,
                "relay+card": lambda s: s.post(relay_url, json=templated, headers=auth, timeout=30).status_code,
                "detokenize": lambda s: s.post(f"{server.url}/v1/detokenize", json={"tokens": [card],
                                               "purpose": "payment"}, headers=auth, timeout=30).status_code,
            }
            for send in cases.values():
                drive(send, 2.0, args.concurrency)  # warm up connections and key caches
            # Alternating rounds (forward, reverse, ...): a case's place in the run (what the vault's
            # background work is doing then) moved figures by 2x; each case now sits early and late.
            seen: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in cases}
            order = list(cases)
            for round_ in range(args.rounds):
                for name in order if round_ % 2 == 0 else reversed(order):
                    upstream.seen.clear()  # it records every request: keep its memory flat
                    latencies, errors = drive(cases[name], args.duration / args.rounds, args.concurrency)
                    seen[name] = (seen[name][0] + latencies, seen[name][1] + errors)
            results = {name: summary(latencies, errors, args.duration) for name, (latencies, errors) in seen.items()}
    upstream.stop()
    out = sys.stderr if args.json else sys.stdout
    print(f"{'case':<12} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}", file=out)
    for name, r in results.items():
        print(f"{name:<12} {r['rps']:>8.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>7.0f}", file=out)
    added = results["relay+card"]["p50_ms"] - results["direct"]["p50_ms"]
    print(f"relay+card adds {added:.1f} ms at p50 and "
          f"{results['relay+card']['p99_ms'] - results['direct']['p99_ms']:.1f} ms at p99 over direct "
          f"({args.concurrency} client threads, {args.duration:.0f} s per case in {args.rounds} rounds)", file=out)
    print(json.dumps({"cases": results, "concurrency": args.concurrency, "duration": args.duration}))
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
