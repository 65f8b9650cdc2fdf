"""The raw limit: AES-256-GCM in a Python loop plus a SQLite bulk insert, items/s on one core.

No HTTP, no validation, no audit, no policy: what is left when everything but the two unavoidable
steps is taken away, to compare the vault's figures with later (design notes §6 saw ~100,000/s).

    .venv/bin/python bench/raw_limit.py [--items 200000] [--batch 1000] [--repeat 3] [--database PATH]
                                        [--modes encrypt+insert,envelope+insert] [--json]

Each mode is timed separately, best of --repeat, each run on a new, empty database file:
- encrypt:          seal every item with one AES-256-GCM key (random 96-bit nonce, AAD = token)
- insert:           executemany() of already sealed rows, one transaction per batch
- encrypt+insert:   both, batch by batch (the raw limit proper)
- envelope+insert:  what the vault does per record without a subject: a fresh data key per item,
                    the item sealed with it and the data key wrapped by a domain key (2 seals and
                    one AESGCM() per item), then both rows inserted

SQLite uses the service's pragmas (WAL, synchronous=NORMAL, secure_delete=ON). Plaintexts are built
before the clock starts (canonical card JSON with random Luhn-valid PANs); tokens are 16 random bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12
MODES = ("encrypt", "insert", "encrypt+insert", "envelope+insert")


def luhn_complete(payload: str) -> str:
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return payload + str((10 - total % 10) % 10)


def plaintexts(count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        pan = luhn_complete("4" + "".join(secrets.choice("0123456789") for _ in range(14)))
        out.append(json.dumps({"exp_month": 12, "exp_year": 2030, "pan": pan}, separators=(",", ":"),
                              sort_keys=True).encode())
    return out


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "secure_delete=ON", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE data_keys (id BLOB PRIMARY KEY, wrapped BLOB NOT NULL)")
    conn.execute("CREATE TABLE records (token BLOB PRIMARY KEY, key_id BLOB, ciphertext BLOB NOT NULL)")
    return conn


def seal(aead: AESGCM, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + aead.encrypt(nonce, plaintext, aad)


def encrypt_only(items: list[bytes], batch: int, conn: sqlite3.Connection) -> None:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    for item in items:
        token = os.urandom(16)
        seal(aead, item, token)


def insert_only(items: list[bytes], batch: int, conn: sqlite3.Connection) -> Callable[[], None]:
    """Rows sealed up front; only the inserts are timed (returns the timed part)."""
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    rows = []
    for item in items:
        token = os.urandom(16)
        rows.append((token, None, seal(aead, item, token)))

    def timed() -> None:
        for start in range(0, len(rows), batch):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows[start:start + batch])
            conn.execute("COMMIT")

    return timed


def encrypt_and_insert(items: list[bytes], batch: int, conn: sqlite3.Connection) -> None:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    for start in range(0, len(items), batch):
        rows = []
        for item in items[start:start + batch]:
            token = os.urandom(16)
            rows.append((token, None, seal(aead, item, token)))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")


def envelope_and_insert(items: list[bytes], batch: int, conn: sqlite3.Connection) -> None:
    domain = AESGCM(AESGCM.generate_key(bit_length=256))
    for start in range(0, len(items), batch):
        keys, rows = [], []
        for item in items[start:start + batch]:
            token, key_id, material = os.urandom(16), os.urandom(12), os.urandom(32)
            keys.append((key_id, seal(domain, material, key_id)))
            rows.append((token, key_id, seal(AESGCM(material), item, token + key_id)))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO data_keys VALUES (?, ?)", keys)
        conn.executemany("INSERT INTO records VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")


def fresh(path: Path) -> None:
    """Delete the database and its WAL files: every timed run starts from an empty file."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def measure(name: str, items: list[bytes], args: argparse.Namespace, path: Path) -> float:
    best = float("inf")
    for _ in range(args.repeat):
        fresh(path)
        conn = connect(path)
        try:
            if name == "insert":
                timed = insert_only(items, args.batch, conn)
                started = time.perf_counter()
                timed()
            else:
                work = {"encrypt": encrypt_only, "encrypt+insert": encrypt_and_insert,
                        "envelope+insert": envelope_and_insert}[name]
                started = time.perf_counter()
                work(items, args.batch, conn)
            best = min(best, time.perf_counter() - started)
        finally:
            conn.close()
    return len(items) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="AES-256-GCM + SQLite bulk insert, items/s")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="rows per transaction (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--database", type=Path, default=None,
                        help="SQLite file, deleted and recreated for every run (default: a temp file)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {', '.join(MODES)} (default: all)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")

    items = plaintexts(args.items)
    with tempfile.TemporaryDirectory(prefix="tokenvault-raw-") as tmp:
        path = args.database or Path(tmp) / "raw.db"
        results = {name: measure(name, items, args, path) for name in modes}
    if args.json:
        print(json.dumps({"items": args.items, "batch": args.batch, "repeat": args.repeat, "items_per_sec": results},
                         indent=2))
        return 0
    print(f"{args.items:,} card records, {args.batch} per transaction, best of {args.repeat}, one core\n")
    print("| step | items/s |")
    print("|---|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
