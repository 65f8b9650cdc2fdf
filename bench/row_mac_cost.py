"""Cost of the row MACs (issue #15) on single-item tokenize and detokenize, through the whole app.

The real app in-process (Flask test client: authentication, policy, subject state, keys, audit
chain), one item per request, cards of subjects that have a subject row, consents and an
expired hold, so every row-MAC check of that path runs. Each round measures CPU time per
request with the checks and with them switched off (RowMacs.check and RowMacs.seal replaced
in this process only; the service has no such switch), in alternating order; the cost is
the median of the paired ratios minus 1. The goal is under 5 %. On a loaded machine that
ratio is noisy, so the bench also counts the checks each request makes and times one check
directly: checks per request x time per check / CPU per request is the same cost, derived.

Run: .venv/bin/python bench/row_mac_cost.py [--rounds 8] [--requests 300] [--database-url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.http.app import create_app
from bench.embedded import discard, fresh_vault
from bench.harness.vaultdata import UNLIMITED, luhn_complete
from vault.audit.trail import Actor, Origin
from vault.keys.row_mac import RowMacs
from vault.storage.schema import subjects

SUBJECTS = 20
OFFICER = Actor(id="bench-officer", role="privacy_officer")


@contextmanager
def checks_off() -> Iterator[None]:
    """Row MACs neither checked nor computed, for the duration (this bench process only)."""
    check, seal = RowMacs.check, RowMacs.seal
    RowMacs.check = lambda self, conn, table, row: None  # type: ignore[method-assign]
    RowMacs.seal = lambda self, conn, table, row: "off:0"  # type: ignore[method-assign]
    try:
        yield
    finally:
        RowMacs.check, RowMacs.seal = check, seal  # type: ignore[method-assign]


def _checks_per_request(case: Callable[[int], None], requests: int) -> float:
    """How many row MACs one request checks (counted, not timed)."""
    calls = 0
    check = RowMacs.check

    def counting(self: RowMacs, conn: Any, table: Any, row: Any) -> None:
        nonlocal calls
        calls += 1
        check(self, conn, table, row)

    RowMacs.check = counting  # type: ignore[method-assign]
    try:
        for index in range(requests):
            case(index)
    finally:
        RowMacs.check = check  # type: ignore[method-assign]
    return calls / requests


def _one_check_us(parts: Any) -> float:
    """CPU microseconds of one RowMacs.check on a subject row (key cached, as on the request path)."""
    macs = RowMacs(parts.keys)
    with parts.engine.connect() as conn:
        row = dict(conn.execute(select(subjects).limit(1)).mappings().one())
        macs.check(conn, subjects, row)
        start = time.process_time()
        for _ in range(5000):
            macs.check(conn, subjects, row)
        return (time.process_time() - start) * 1e6 / 5000


def _card(subject: str) -> dict[str, Any]:
    pan = luhn_complete("4" + str(secrets.randbelow(10**14)).zfill(14))
    return {"kind": "card", "value": {"pan": pan, "exp_month": 12, "exp_year": 2099}, "subject_id": subject}


def measure(rounds: int, requests: int, database_url: str | None = None) -> dict[str, Any]:
    parts, url = fresh_vault(database_url, "tv-bench-rowmac-", TOKENVAULT_RATE_LIMIT=UNLIMITED,
                             TOKENVAULT_DETOKENIZE_RATE_LIMIT=UNLIMITED)
    try:
        client = create_app(parts=parts).test_client()
        checkout = {"Authorization": "Bearer " + parts.clients.create("bench-checkout", "checkout")[1].expose()}
        gateway = {"Authorization": "Bearer " + parts.clients.create("bench-gateway", "payment_gateway")[1].expose()}
        subjects = [f"bench-subject-{n}" for n in range(SUBJECTS)]
        tokens = []
        for subject in subjects:
            answer = client.post("/v1/tokens", json=_card(subject), headers=checkout)
            assert answer.status_code == 201, answer.get_json()
            tokens.append(answer.get_json()["token"])
            parts.privacy.set_consents(OFFICER, subject, {"marketing": False}, "bench", Origin())
            parts.privacy.add_hold(OFFICER, subject, "bench", datetime.now(UTC) + timedelta(seconds=1), Origin())
        time.sleep(1.1)  # the holds have expired: read and checked, not refusing

        def tokenize(index: int) -> None:
            answer = client.post("/v1/tokens", json=_card(subjects[index % SUBJECTS]), headers=checkout)
            assert answer.status_code == 201, answer.get_json()

        def detokenize(index: int) -> None:
            answer = client.post("/v1/detokenize", json={"tokens": [tokens[index % SUBJECTS]],
                                                                "purpose": "payment"}, headers=gateway)
            assert answer.status_code == 200 and "value" in answer.get_json()["results"][0], answer.get_json()

        def cpu_ms(case: Callable[[int], None]) -> float:
            start = time.process_time()
            for index in range(requests):
                case(index)
            return (time.process_time() - start) * 1000 / requests

        def side(case: Callable[[int], None], on: bool) -> float:
            if on:
                return cpu_ms(case)
            with checks_off():
                return cpu_ms(case)

        out: dict[str, Any] = {"engine": parts.engine.dialect.name, "rounds": rounds, "requests": requests}
        check_us = _one_check_us(parts)
        out["check_us"] = round(check_us, 2)
        for name, case in (("tokenize", tokenize), ("detokenize", detokenize)):
            side(case, True), side(case, False)  # warm-up
            on_ms, off_ms, ratios = [], [], []
            for index in range(rounds):
                order = (True, False) if index % 2 == 0 else (False, True)
                got = {flag: side(case, flag) for flag in order}
                on_ms.append(got[True])
                off_ms.append(got[False])
                ratios.append(got[True] / got[False])
            per_request = _checks_per_request(case, requests)
            out[name] = {"cpu_ms_with_macs": round(statistics.median(on_ms), 3),
                         "cpu_ms_without_macs": round(statistics.median(off_ms), 3),
                         "cost": round(statistics.median(ratios) - 1, 4),
                         "checks_per_request": round(per_request, 2),
                         "derived_cost": round(per_request * check_us / 1000 / statistics.median(off_ms), 4)}
        return out
    finally:
        discard(parts, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    result = measure(args.rounds, args.requests, args.database_url)
    if args.json:
        print(json.dumps(result))
        return
    print(f"engine: {result['engine']}; {args.rounds} alternating rounds x {args.requests} requests per side")
    print(f"one check: {result['check_us']} µs CPU")
    print("| request | CPU ms with row MACs | without | cost (median of paired ratios; goal < 5 %) | checks/request "
          "| derived cost |")
    print("|---|---|---|---|---|---|")
    for name in ("tokenize", "detokenize"):
        r = result[name]
        print(f"| single {name} | {r['cpu_ms_with_macs']} | {r['cpu_ms_without_macs']} | {r['cost']:+.1%} "
              f"| {r['checks_per_request']} | {r['derived_cost']:+.2%} |")


if __name__ == "__main__":
    main()
