"""Servers this run starts, each in its own process group, and stopped on any exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import requests

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
WRK_DIR = BENCH / "wrk"
RESULTS = BENCH / "results"


class BenchError(RuntimeError):
    """The run could not be done (not a slow result): exit 2 with the message."""


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
        raise BenchError("`tokenvault` not found: run with the project's venv, e.g. .venv/bin/python bench/run.py")
    return Path(found)


def venv_python(tokenvault: Path) -> Path:
    beside = tokenvault.with_name("python")
    return beside if beside.exists() else Path(sys.executable)


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    ready_path: str = "/healthz"


def _http_ready(service: Service) -> bool:
    with contextlib.suppress(requests.RequestException):
        return requests.get(service.url + service.ready_path, timeout=1).status_code == 200
    return False


@dataclass
class Processes:
    """Every server this run started; `stop_all` ends each one's whole process group."""

    started: list[Service] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str], url: str, ready_path: str, log: Path,
              cwd: Path = ROOT) -> Service:
        """Start without waiting (several servers can then boot at once); see `wait_ready`."""
        with log.open("ab") as handle:
            process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        service = Service(name, url, process, log, ready_path)
        self.started.append(service)
        return service

    def start(self, name: str, argv: list[str], env: dict[str, str], url: str, ready_path: str, log: Path) -> Service:
        service = self.spawn(name, argv, env, url, ready_path, log)
        wait_ready(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            stop(service)
        self.started.clear()


def wait_ready(service: Service, timeout: float = 60.0, ready: Callable[[Service], bool] = _http_ready) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited during start; see {service.log}:\n{log_tail(service.log)}")
        if ready(service):
            return
        time.sleep(0.1)
    raise BenchError(f"{service.name} not ready after {timeout:.0f} s; see {service.log}")


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(service: Service) -> None:
    """SIGTERM to the server's process group, then SIGKILL if it lingers."""
    process = service.process
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=35)  # the server drains for up to 30 s (api/http/server.py)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # runs the callers' `finally`, which stops the servers


def install_signal_handlers() -> None:
    """Explicit handlers, also for SIGINT: a shell starts background jobs with SIGINT ignored."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)


def worker_pids(master_pid: int) -> list[int]:
    """The direct children of a server master (its workers)."""
    children: list[int] = []
    for task in Path(f"/proc/{master_pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(pid) for pid in (task / "children").read_text().split()]
    return sorted(set(children))


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process in MB (MiB), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        # The report's own published copy (docs/bench) does not make the code under test dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)docs/bench"], cwd=ROOT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def exit_with(main: Callable[[], int]) -> NoReturn:
    """Run a bench entry point: its exit status, or 2 with the message when the run could not be done."""
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
