"""The vault's side of a run: CLI calls, API clients, card tokens made in batches, /metrics counters."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from bench.harness.procs import BenchError

UNLIMITED = "1000000/second"
BATCH = 1000  # the API's maximum items per batch request
METRICS_TOKEN = "bench-" + secrets.token_hex(16)  # /metrics needs a token; each vault of this run gets this one
_OPS_LINE = re.compile(r'^tokenvault_operations_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_KMS_LINE = re.compile(r'^tokenvault_kms_calls_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def cli(tokenvault: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(tokenvault), *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"tokenvault {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def create_client(tokenvault: Path, env: dict[str, str], role: str) -> str:
    out = cli(tokenvault, env, "clients", "create", "--name", f"bench-{role}", "--role", role)
    key: str = json.loads(out)["api_key"]
    return key


def luhn_complete(payload: str) -> str:
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return payload + str((10 - total % 10) % 10)


def card_items(count: int) -> list[dict[str, Any]]:
    """`count` tokenize items, each a new random Luhn-valid 16-digit card."""
    exp_year = datetime.now(UTC).year + 3
    return [{"kind": "card", "value": {"pan": luhn_complete("4" + "".join(secrets.choice("0123456789")
                                                                          for _ in range(14))),
                                       "exp_month": 12, "exp_year": exp_year}} for _ in range(count)]


def _batch_tokenize(url: str, checkout_key: str, size: int) -> list[str]:
    answer = requests.post(url + "/v1/tokens/batch", json={"items": card_items(size)}, timeout=120,
                           headers={"Authorization": f"Bearer {checkout_key}"})
    if answer.status_code != 200:
        raise BenchError(f"batch tokenize answered {answer.status_code}: {answer.text[:300]}")
    results = answer.json()["results"]
    failed = [r for r in results if "token" not in r]
    if failed:
        raise BenchError(f"batch tokenize: {len(failed)} item errors, first {failed[0].get('error')}")
    return [r["token"] for r in results]


def create_tokens(url: str, checkout_key: str, count: int, parallel: int = 2) -> list[str]:
    """`count` card tokens through POST /v1/tokens/batch, `parallel` requests at a time."""
    sizes = [min(BATCH, count - start) for start in range(0, count, BATCH)]
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        chunks = list(pool.map(lambda size: _batch_tokenize(url, checkout_key, size), sizes))
    return [token for chunk in chunks for token in chunk]


def write_tokens(tokens: list[str], path: Path) -> Path:
    path.write_text("\n".join(tokens) + "\n", encoding="ascii")
    return path


def read_back(url: str, gateway_key: str, tokens: list[str]) -> None:
    """Before measuring: the gateway reads every token back (1,000 a request), so a silent failure cannot pass
    for speed and the once-a-day `last_used_at` write of each card happens here, not in a measured run."""
    for start in range(0, len(tokens), BATCH):
        chunk = tokens[start:start + BATCH]
        answer = requests.post(url + "/v1/detokenize", json={"tokens": chunk, "purpose": "payment"}, timeout=120,
                               headers={"Authorization": f"Bearer {gateway_key}"})
        if answer.status_code != 200:
            raise BenchError(f"detokenize check failed: {answer.status_code} {answer.text[:300]}")
        bad = [r for r in answer.json()["results"] if "value" not in r]
        if bad:
            raise BenchError(f"detokenize check: {len(bad)} of {len(chunk)} tokens not readable, first {bad[0]}")


def vault_counters(url: str) -> dict[str, float]:
    """Per-item outcomes and KMS calls so far, summed over the workers (multiprocess metrics)."""
    text = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for pattern, prefix in ((_OPS_LINE, "ops"), (_KMS_LINE, "kms")):
            match = pattern.match(line)
            if match is None:
                continue
            labels = dict(_LABEL.findall(match.group("labels")))
            if prefix == "ops":
                name = f"ops:{labels.get('operation')}:{labels.get('outcome')}"
            else:
                name = f"kms:{labels.get('method')}:{labels.get('outcome')}"
            counts[name] = counts.get(name, 0.0) + float(match.group("value"))
    return counts


def diff(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def item_errors(changes: dict[str, int]) -> int:
    return sum(v for k, v in changes.items() if k.startswith("ops:") and not k.endswith(":allowed"))


def kms_calls(changes: dict[str, int]) -> int:
    return sum(v for k, v in changes.items() if k.startswith("kms:"))


def tokens_created(url: str) -> int:
    """Card (and other) tokens this server has created since it started: allowed tokenize items."""
    return int(vault_counters(url).get("ops:tokenize:allowed", 0))
