"""wrk runs: one Lua script of bench/wrk/ against one URL, figures from its WRK_JSON line (report.lua)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

from bench.harness.procs import WRK_DIR, BenchError


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk not found (Debian: apt-get install wrk)")


def wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = (done.stdout or done.stderr).split()  # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) ..."
    return " ".join(words[:2]) if words else "unknown"


def run_wrk(script: str, url: str, seconds: float, *, threads: int, connections: int, env: dict[str, str],
            script_args: list[str] | None = None, timeout: int = 10) -> dict[str, Any]:
    """One wrk run of `bench/wrk/<script>.lua`; returns requests, duration, errors and latency (us)."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{timeout}s",
            "-s", str(WRK_DIR / f"{script}.lua"), url]
    if script_args:
        argv += ["--", *script_args]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + timeout + 60,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk {script} did not finish in time") from exc
    if done.returncode != 0:
        raise BenchError(f"wrk {script} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse_wrk(script, done.stdout, done.stderr)


def parse_wrk(script: str, out: str, err: str = "") -> dict[str, Any]:
    marker = next((line for line in out.splitlines() if line.startswith("WRK_JSON ")), None)
    if marker is None:
        raise BenchError(f"wrk {script}: no WRK_JSON line from the Lua done(); output:\n{out}\n{err}")
    stats: dict[str, Any] = json.loads(marker.removeprefix("WRK_JSON "))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    seconds = stats["duration_us"] / 1e6
    stats["requests_per_sec"] = stats["requests"] / seconds if seconds else 0.0
    stats["non_2xx_3xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = stats["errors"]
    stats["http_errors"] = errors["status"] + errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    stats["script"] = script
    return stats
