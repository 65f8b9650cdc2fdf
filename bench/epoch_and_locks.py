"""Issue #17 figures, side by side in one run: the erasure epoch's rewrap rate, and what the
concurrency fixes cost single-item and batch tokenize.

Run: .venv/bin/python bench/epoch_and_locks.py [--keys 50000] [--rounds 6] [--database-url URL] [--json]
     .venv/bin/python bench/epoch_and_locks.py --before-after [--keys 50000] [--rounds 4] [--database-url URL]

- Epoch: `--keys` subjects with one data key each, then `start_epoch` + `run` (the code
  `tokenvault keys epoch` runs): data keys rewrapped per second, KEK versions destroyed at the end.
- Locks: tokenize for existing subjects (the path that now holds the subject's data-key row
  FOR KEY SHARE) with the fix and with the pre-fix unlocked read swapped in, in alternating rounds;
  single-item calls and 1,000-item batches. The cost is the median of paired ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from api.wiring import Components
from bench.embedded import discard, fresh_vault
from vault.audit.trail import Actor, Origin
from vault.keys import hierarchy
from vault.keys.hierarchy import DataKey, KeyHierarchy
from vault.keys.rotation import KeyLifecycle
from vault.storage.schema import data_keys, insert_ignoring_conflict
from vault.tokens.records import TokenRequest

CHECKOUT, ADMIN, ORIGIN = Actor(id="bench", role="checkout"), Actor(id="bench-admin", role="admin"), Origin()


def _unlocked_subject_data_key(self: KeyHierarchy, conn: Connection, subject_id: str, purpose: str) -> DataKey:
    """The pre-#17 read (no FOR SHARE): only to measure what the lock costs."""
    found = select(data_keys).where(data_keys.c.subject_id == subject_id, data_keys.c.purpose == purpose)
    row = conn.execute(found).mappings().first()
    if row is None:
        key = self.new_data_key(conn, purpose, subject_id)
        if conn.execute(insert_ignoring_conflict(conn, data_keys), [key.row]).rowcount == 1:
            return key
        row = conn.execute(found).mappings().one()
    return DataKey(row["id"], self.open_data_keys(conn, [dict(row)])[row["id"]], dict(row))


def _unlocked_subject_data_keys(self: KeyHierarchy, conn: Connection,
                                slots: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DataKey]:
    """The pre-#17 path: one unlocked read per subject key."""
    return {slot: _unlocked_subject_data_key(self, conn, *slot) for slot in set(slots)}


def _card(n: int, subject: str) -> TokenRequest:
    return TokenRequest(kind="email", value=f"u{n}@example.com", subject_id=subject)


def epoch(parts: Components, keys: int) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, keys, 1000):
        parts.tokens.tokenize(CHECKOUT, [_card(i, f"epoch-{i}") for i in range(start, min(start + 1000, keys))],
                              ORIGIN)
    filled = time.perf_counter() - started
    job = parts.lifecycle.start_epoch(ADMIN, ORIGIN)
    started = time.perf_counter()
    state = parts.lifecycle.run(job, batch=2000)
    elapsed = time.perf_counter() - started
    return {"data_keys": keys, "fill_s": round(filled, 1), "epoch_s": round(elapsed, 2), "moved": state["done"],
            "keys_per_sec": round(state["done"] / elapsed), "status": state["status"],
            "kek_versions_left": sorted(parts.provider.info().versions)}


def _sorted_locked(self: KeyLifecycle, conn: Connection, condition: Any, batch: int) -> list[dict[str, Any]]:
    """The pre-#17-follow-up batch read: every column, ORDER BY id on SQLite too (it sorted all keys left)."""
    query = select(data_keys).where(condition).order_by(data_keys.c.id).limit(batch)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return [dict(r) for r in conn.execute(query).mappings()]


def _processed_move(self: KeyLifecycle, conn: Connection, old: list[str], batch: int) -> int:
    """The pre-follow-up update: SQLAlchemy's executemany, every parameter processed row by row."""
    rows = self._locked(conn, data_keys.c.domain_key_id.in_(old), batch)
    moved = [{"key_id": row["id"], "target": target, "rewrapped": rewrapped}
             for row, (target, rewrapped) in zip(rows, self._keys.rewrap_under_active(conn, rows), strict=True)]
    if moved:
        conn.execute(update(data_keys).where(data_keys.c.id == bindparam("key_id"))
                     .values(domain_key_id=bindparam("target"), wrapped=bindparam("rewrapped")), moved)
    return len(rows)


def _dumps_associated_data(label: str, **fields: Any) -> bytes:
    """The pre-follow-up associated data: json.dumps, a new encoder per call (same bytes)."""
    return (label + "|" + json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)).encode()


def epoch_before_after(parts: Components, keys: int, rounds: int) -> dict[str, Any]:
    """Epochs over the same live keys, alternating the previous rewrap code and today's; median rates."""
    for start in range(0, keys, 1000):
        parts.tokens.tokenize(CHECKOUT, [_card(i, f"ab-{i}") for i in range(start, min(start + 1000, keys))], ORIGIN)
    locked, move, aad = KeyLifecycle._locked, KeyLifecycle._move_data_keys, hierarchy.associated_data
    rates: dict[str, list[float]] = {"before": [], "after": []}
    for round_number in range(rounds):
        for name in (("before", "after") if round_number % 2 == 0 else ("after", "before")):
            if name == "before":
                KeyLifecycle._locked = _sorted_locked  # type: ignore[method-assign]
                KeyLifecycle._move_data_keys = _processed_move  # type: ignore[method-assign]
                hierarchy.associated_data = _dumps_associated_data
            try:
                job = parts.lifecycle.start_epoch(ADMIN, ORIGIN)
                started = time.perf_counter()
                state = parts.lifecycle.run(job, batch=2000)
                rates[name].append(state["done"] / (time.perf_counter() - started))
            finally:
                KeyLifecycle._locked, KeyLifecycle._move_data_keys = locked, move  # type: ignore[method-assign]
                hierarchy.associated_data = aad
    before, after = statistics.median(rates["before"]), statistics.median(rates["after"])
    return {"data_keys": keys, "rounds": rounds, "before_keys_per_sec": round(before),
            "after_keys_per_sec": round(after), "speedup": round(after / before, 2)}


def locks(parts: Components, rounds: int, singles: int, batches: int) -> dict[str, Any]:
    subjects = [f"lock-{i}" for i in range(200)]
    parts.tokens.tokenize(CHECKOUT, [_card(i, s) for i, s in enumerate(subjects)], ORIGIN)  # keys exist
    locked = KeyHierarchy.subject_data_keys
    n = 0

    def single() -> float:
        nonlocal n
        started = time.perf_counter()
        for _ in range(singles):
            n += 1
            parts.tokens.tokenize(CHECKOUT, [_card(n, subjects[n % len(subjects)])], ORIGIN)
        return singles / (time.perf_counter() - started)

    def batch() -> float:
        nonlocal n
        started = time.perf_counter()
        for _ in range(batches):
            items = [_card(n + i, subjects[(n + i) % len(subjects)]) for i in range(1000)]
            n += 1000
            parts.tokens.tokenize(CHECKOUT, items, ORIGIN)
        return batches * 1000 / (time.perf_counter() - started)

    out: dict[str, Any] = {}
    for name, measure in (("single", single), ("batch", batch)):
        with_fix, without, ratios = [], [], []
        measure()  # warm-up
        for round_number in range(rounds):
            order = (True, False) if round_number % 2 == 0 else (False, True)
            figures = {}
            for fixed in order:
                KeyHierarchy.subject_data_keys = locked if fixed else _unlocked_subject_data_keys  # type: ignore[method-assign]
                try:
                    figures[fixed] = measure()
                finally:
                    KeyHierarchy.subject_data_keys = locked  # type: ignore[method-assign]
            with_fix.append(figures[True])
            without.append(figures[False])
            ratios.append(figures[True] / figures[False])
        out[name] = {"with_locks_per_sec": round(statistics.median(with_fix)),
                     "without_locks_per_sec": round(statistics.median(without)),
                     "cost": round(1 - statistics.median(ratios), 4)}
    return out


def measure(database_url: str | None, keys: int, rounds: int, before_after: bool = False) -> dict[str, Any]:
    parts, url = fresh_vault(database_url, "tv-epoch-", TOKENVAULT_KEY_CACHE_SECONDS="0.5")
    try:
        if before_after:
            return {"engine": parts.engine.dialect.name, "rewrap": epoch_before_after(parts, keys, rounds)}
        return {"engine": parts.engine.dialect.name, "epoch": epoch(parts, keys),
                "locks": locks(parts, rounds, singles=600, batches=3)}
    finally:
        discard(parts, url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--before-after", action="store_true",
                        help="only the epoch: the previous rewrap code and today's, alternating, over the same keys")
    args = parser.parse_args()
    result = measure(args.database_url, args.keys, args.rounds, args.before_after)
    if args.json or args.before_after:
        print(json.dumps(result))
        return
    e, lk = result["epoch"], result["locks"]
    print(f"engine: {result['engine']}")
    print(f"epoch: {e['moved']:,} data keys rewrapped in {e['epoch_s']} s = {e['keys_per_sec']:,} keys/s "
          f"(goal >= 5,000); KEK versions left {e['kek_versions_left']}")
    print("| tokenize (existing subjects) | with locks /s | without /s | cost (goal < 5 %) |\n|---|---|---|---|")
    for name in ("single", "batch"):
        row = lk[name]
        print(f"| {name} | {row['with_locks_per_sec']:,} | {row['without_locks_per_sec']:,} | {row['cost']:.1%} |")


if __name__ == "__main__":
    main()
