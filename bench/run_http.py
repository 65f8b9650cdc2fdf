"""Tokenize and detokenize req/s over HTTP with wrk, next to a hello-world Flask ceiling.

One command starts everything in a fresh temp data dir and stops it all at the end, even on failure:

    .venv/bin/python bench/run_http.py [--duration 10] [--connections 32] [--threads 2] [--workers 2]

1. `tokenvault init`, then a checkout client and a payment_gateway client (`tokenvault clients create`).
2. The hello app (bench/hello_app.py) under gunicorn with api/gunicorn_conf.py, and the vault with
   `tokenvault serve`, each on its own free loopback port, with the same worker count and class.
3. 1,000 card tokens created through POST /v1/tokens/batch, written to a file for detokenize.lua.
4. A short unrecorded warm-up of each case (key caches, connection pools, first-use writes), then
   the cases alternated (hello, tokenize, detokenize, then reversed, ...) so drift hits them all.
5. A Markdown table (req/s, p50, p99, ratio to hello, errors) on stdout and every figure in
   bench/results/<UTC date-time>.json (git-ignored).

Errors: HTTP errors are wrk's count of status >= 400 plus socket errors. Item errors come from the
vault's own /metrics (tokenvault_operations_total outcomes other than `allowed`), because a
detokenize of a missing token still answers 200 with the error inside the body.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WRK_DIR = BENCH / "wrk"
RESULTS = BENCH / "results"
GUNICORN_CONF = ROOT / "api" / "gunicorn_conf.py"
CASES = ("hello", "tokenize", "detokenize")
UNLIMITED = "1000000/second"
_OPS_LINE = re.compile(r'^tokenvault_operations_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_KMS_LINE = re.compile(r'^tokenvault_kms_calls_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class BenchError(RuntimeError):
    pass


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_tokenvault() -> Path:
    """The `tokenvault` script of the environment running this file, else the first on PATH."""
    beside = Path(sys.executable).with_name("tokenvault")
    if beside.exists():
        return beside
    found = shutil.which("tokenvault")
    if found is None:
        raise BenchError("`tokenvault` not found: run with the project's venv, e.g. .venv/bin/python bench/run_http.py")
    return Path(found)


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """Every server this run started; `stop_all` ends each one's whole process group."""

    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], url: str, ready_path: str, log: Path) -> Service:
        with log.open("ab") as handle:
            process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=ROOT)
        service = Service(name, url, process, log)
        self.started.append(service)
        wait_ready(service, ready_path)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            stop(service)
        self.started.clear()


def wait_ready(service: Service, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited during start; see {service.log}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(service.url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{service.name} not ready after {timeout:.0f} s; see {service.log}")


def stop(service: Service) -> None:
    """SIGTERM to the gunicorn master's process group, then SIGKILL if it lingers."""
    process = service.process
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=35)  # gunicorn's graceful_timeout is 30 s
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs the `finally` that stops the servers


# -- the vault's data --------------------------------------------------------------------------------


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


def create_tokens(url: str, checkout_key: str, count: int, path: Path) -> int:
    """`count` card tokens through the batch endpoint, one per line in `path`."""
    exp_year = datetime.now(UTC).year + 3
    tokens: list[str] = []
    while len(tokens) < count:
        size = min(1000, count - len(tokens))
        items = [{"kind": "card", "value": {"pan": luhn_complete("4" + "".join(secrets.choice("0123456789")
                                                                                for _ in range(14))),
                                            "exp_month": 12, "exp_year": exp_year}} for _ in range(size)]
        answer = requests.post(url + "/v1/tokens/batch", json={"items": items}, timeout=120,
                               headers={"Authorization": f"Bearer {checkout_key}"})
        if answer.status_code != 200:
            raise BenchError(f"batch tokenize answered {answer.status_code}")
        results = answer.json()["results"]
        failed = [r for r in results if "token" not in r]
        if failed:
            raise BenchError(f"batch tokenize: {len(failed)} item errors, first {failed[0].get('error')}")
        tokens += [r["token"] for r in results]
    path.write_text("\n".join(tokens) + "\n", encoding="ascii")
    return len(tokens)


def check_detokenize(url: str, gateway_key: str, tokens_file: Path) -> None:
    """Before measuring: a gateway reads a few tokens back, so a silent failure cannot pass for speed."""
    sample = tokens_file.read_text(encoding="ascii").split()[:5]
    answer = requests.post(url + "/v1/detokenize", json={"tokens": sample, "purpose": "payment"}, timeout=30,
                           headers={"Authorization": f"Bearer {gateway_key}"})
    if answer.status_code != 200 or any("value" not in r for r in answer.json()["results"]):
        raise BenchError(f"detokenize check failed: {answer.status_code} {answer.text[:300]}")


def vault_counters(url: str) -> dict[str, float]:
    """Per-item outcomes and KMS calls so far, summed over both workers (multiprocess metrics)."""
    text = requests.get(url + "/metrics", timeout=10).text
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


# -- wrk ---------------------------------------------------------------------------------------------------


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].strip() if (done.stdout or done.stderr) else "unknown"


def run_wrk(args: argparse.Namespace, case: str, url: str, seconds: int, env: dict[str, str],
            script_args: list[str]) -> dict[str, Any]:
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(WRK_DIR / f"{case}.lua"), url]
    if script_args:
        argv += ["--", *script_args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk {case} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    out = done.stdout
    marker = next((line for line in out.splitlines() if line.startswith("WRK_JSON ")), None)
    if marker is None:
        raise BenchError(f"wrk {case}: no WRK_JSON line from the Lua done(); output:\n{out}\n{done.stderr}")
    stats: dict[str, Any] = json.loads(marker.removeprefix("WRK_JSON "))
    req_line = re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.MULTILINE)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    stats["requests_per_sec"] = float(req_line.group(1)) if req_line else stats["requests"] / (
        stats["duration_us"] / 1e6)
    stats["non_2xx_3xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = stats["errors"]
    stats["http_errors"] = errors["status"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    stats["case"] = case
    stats["seconds"] = seconds
    return stats


# -- report ------------------------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per case: req/s over all its runs (total requests / total time); p50/p99 the median of its runs."""
    out: dict[str, dict[str, Any]] = {}
    for case in CASES:
        mine = [r for r in runs if r["case"] == case]
        if not mine:
            continue
        requests_total = sum(r["requests"] for r in mine)
        seconds = sum(r["duration_us"] for r in mine) / 1e6
        out[case] = {
            "runs": len(mine),
            "requests": requests_total,
            "requests_per_sec": requests_total / seconds if seconds else 0.0,
            "p50_ms": statistics.median(r["latency_us"]["p50"] for r in mine) / 1000,
            "p99_ms": statistics.median(r["latency_us"]["p99"] for r in mine) / 1000,
            "http_errors": sum(r["http_errors"] for r in mine),
            "item_errors": sum(r.get("item_errors", 0) for r in mine),
            "kms_calls": sum(r.get("kms_calls", 0) for r in mine),
        }
    hello = out.get("hello", {}).get("requests_per_sec")
    for figures in out.values():
        figures["ratio_to_hello"] = figures["requests_per_sec"] / hello if hello else None
    return out


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    labels = {"hello": "hello-world Flask (ceiling)", "tokenize": "POST /v1/tokens (1 card)",
              "detokenize": "POST /v1/detokenize (1 token)"}
    lines = ["| case | req/s | p50 ms | p99 ms | vs hello | HTTP errors | item errors | KMS calls |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case, f in summary.items():
        ratio = f"{f['ratio_to_hello']:.2f}" if f["ratio_to_hello"] is not None else "n/a"
        item = "n/a" if case == "hello" else str(f["item_errors"])
        kms = "n/a" if case == "hello" else str(f["kms_calls"])
        lines.append(f"| {labels[case]} | {f['requests_per_sec']:,.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} "
                     f"| {ratio} | {f['http_errors']} | {item} | {kms} |")
    return "\n".join(lines)


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


# -- main --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per case in total (default 10)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="split each case's duration into this many alternating runs (default 2)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded seconds per case before measuring")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for both servers (default 2)")
    parser.add_argument("--tokens", type=int, default=1000, help="pre-created tokens for detokenize (default 1000)")
    parser.add_argument("--real-rate-limits", action="store_true",
                        help="keep the vault's default per-client rate limits (by default raised to "
                             f"{UNLIMITED} so they never refuse)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data dir and server logs")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.connections < args.threads or args.threads < 1:
        parser.error("need duration >= 1, rounds >= 1, threads >= 1 and connections >= threads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found (Debian: apt-get install wrk)")
    tokenvault = find_tokenvault()
    python = tokenvault.with_name("python") if tokenvault.with_name("python").exists() else Path(sys.executable)
    # Explicit handlers, also for SIGINT: a shell starts background jobs with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)

    work = Path(tempfile.mkdtemp(prefix="tokenvault-bench-"))
    processes = Processes()
    started_at = datetime.now(UTC)
    load_before = os.getloadavg()
    if load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs before the run; "
              "other work on this machine will lower every figure", file=sys.stderr)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENVAULT_", "PROMETHEUS_"))}
        vault_port, hello_port = free_port(), free_port()
        vault_env = {**base, "TOKENVAULT_DATA_DIR": str(work / "var"), "TOKENVAULT_WORKERS": str(args.workers),
                     "TOKENVAULT_BIND": f"127.0.0.1:{vault_port}"}
        if not args.real_rate_limits:
            # One client per role sends everything: raise its limits so the limiter's bookkeeping is
            # measured but it never refuses (the defaults would cap detokenize at 100/s per worker).
            vault_env.update(TOKENVAULT_RATE_LIMIT=UNLIMITED, TOKENVAULT_DETOKENIZE_RATE_LIMIT=UNLIMITED)
        # Each gunicorn master gets its own metrics dir inside `work` (removed with it); the CLI gets none.
        serve_env = {**vault_env, "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics-vault")}
        hello_env = {**base, "TOKENVAULT_WORKERS": str(args.workers), "TOKENVAULT_BIND": f"127.0.0.1:{hello_port}",
                     "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics-hello")}
        # gunicorn >= 25 opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl (else ~/.gunicorn/): one
        # directory per server, so the two masters never fight over one socket.
        serve_env["XDG_RUNTIME_DIR"] = str(work / "run-vault")
        hello_env["XDG_RUNTIME_DIR"] = str(work / "run-hello")
        for env in (serve_env, hello_env):  # `tokenvault serve` imports prometheus_client before gunicorn starts
            Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(mode=0o700)
            Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700)

        print(f"data dir {work}; initialising", file=sys.stderr)
        cli(tokenvault, vault_env, "init")
        checkout_key = create_client(tokenvault, vault_env, "checkout")
        gateway_key = create_client(tokenvault, vault_env, "payment_gateway")

        hello = processes.start(
            "hello", [str(python), "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--pythonpath", str(BENCH),
                      "hello_app:app"], hello_env, f"http://127.0.0.1:{hello_port}", "/healthz", work / "hello.log")
        vault = processes.start(
            "vault", [str(tokenvault), "serve", "--bind", f"127.0.0.1:{vault_port}", "--workers", str(args.workers)],
            serve_env, f"http://127.0.0.1:{vault_port}", "/readyz", work / "vault.log")

        tokens_file = work / "tokens.txt"
        count = create_tokens(vault.url, checkout_key, args.tokens, tokens_file)
        check_detokenize(vault.url, gateway_key, tokens_file)
        print(f"servers up (hello :{hello_port}, vault :{vault_port}, {args.workers} workers each); "
              f"{count} tokens ready", file=sys.stderr)

        targets = {
            "hello": (hello.url, {**base}, []),
            "tokenize": (vault.url, {**base, "BENCH_API_KEY": checkout_key}, []),
            "detokenize": (vault.url, {**base, "BENCH_API_KEY": gateway_key}, [str(tokens_file)]),
        }
        if args.warmup:
            for case in CASES:
                url, env, extra = targets[case]
                run_wrk(args, case, url, args.warmup, env, extra)

        per_run = max(1, round(args.duration / args.rounds))
        runs: list[dict[str, Any]] = []
        for round_no in range(args.rounds):
            order = CASES if round_no % 2 == 0 else tuple(reversed(CASES))
            for case in order:
                url, env, extra = targets[case]
                before = vault_counters(vault.url) if case != "hello" else {}
                result = run_wrk(args, case, url, per_run, env, extra)
                if case != "hello":
                    changes = diff(vault_counters(vault.url), before)
                    result["vault_counters"] = changes
                    result["item_errors"] = sum(v for k, v in changes.items()
                                                if k.startswith("ops:") and not k.endswith(":allowed"))
                    result["kms_calls"] = sum(v for k, v in changes.items() if k.startswith("kms:"))
                result["round"] = round_no + 1
                runs.append(result)
                print(f"round {round_no + 1} {case:>10}: {result['requests_per_sec']:,.0f} req/s, "
                      f"p99 {result['latency_us']['p99'] / 1000:.2f} ms, {result['http_errors']} HTTP errors",
                      file=sys.stderr)

        summary = summarise(runs)
        table = markdown(summary)
        command = (f"python bench/run_http.py --duration {args.duration} --rounds {args.rounds} "
                   f"--connections {args.connections} --threads {args.threads} --workers {args.workers}")
        print()
        print(f"`{command}`: wrk -t{args.threads} -c{args.connections}, {args.rounds} alternating runs of "
              f"{per_run} s per case, gunicorn {args.workers} sync workers each, {os.cpu_count()} CPUs, "
              f"{started_at:%Y-%m-%d %H:%M} UTC, load average {load_before[0]:.1f} before")
        print()
        print(table)
        print()
        print("req/s = requests / time over all runs of a case; p50/p99 = median of the runs' percentiles; "
              "HTTP errors = status >= 400 + socket errors (wrk); item errors = vault operations not allowed "
              "(/metrics).")

        record = {
            "started_at": started_at.isoformat(),
            "command": command,
            "settings": {"duration": args.duration, "rounds": args.rounds, "seconds_per_run": per_run,
                         "warmup": args.warmup, "connections": args.connections, "threads": args.threads,
                         "workers": args.workers, "worker_class": "sync (api/gunicorn_conf.py)",
                         "tokens": count,
                         "rate_limits": "defaults" if args.real_rate_limits else UNLIMITED},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "wrk": wrk_version(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "git": git_revision(),
            "summary": summary,
            "runs": runs,
            "markdown": table,
        }
        if not args.no_save:
            RESULTS.mkdir(exist_ok=True)
            out = RESULTS / f"{started_at:%Y%m%dT%H%M%SZ}.json"
            out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            print(f"\nwrote {out.relative_to(ROOT)}", file=sys.stderr)
        total_errors = sum(f["http_errors"] + f["item_errors"] for f in summary.values())
        if total_errors:
            print(f"WARNING: {total_errors} errors during the measured runs; "
                  "rerun with --keep to inspect the server logs", file=sys.stderr)
        return 1 if total_errors else 0
    finally:
        processes.stop_all()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
