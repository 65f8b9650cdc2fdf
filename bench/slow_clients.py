"""Slow clients against each candidate serving stack, side by side in one run (issue #18).

For every stack: a fresh SQLite vault with local keys (`tokenvault init`), one checkout client, the
server on a free loopback port; then legitimate clients (keep-alive connections, `POST /v1/tokens` of a
small text value) for `--duration` seconds alone ("quiet"), then again while `--slow` connections trickle
("slow"): half send a request line and then one header every 2 s, half send full headers announcing a
64 KiB body and then one body byte every 2 s. A slow connection the server closes is opened again, so
the pressure holds for the whole phase. Last, SIGTERM with a request in flight: the drain time. The slow
connections come from 127.0.0.2, the legitimate clients from 127.0.0.1 (so the per-address body cap, which
counts bodies per source address, applies to the attacker only); for the body tricklers the figures include
how long the server held each one before answering, and with what status.

    .venv/bin/python bench/slow_clients.py                     # 200 slow x 60 s, every installed stack
    .venv/bin/python bench/slow_clients.py --slow 50 --duration 10 --stacks gevent

Stacks: `serve` (what `tokenvault serve` runs: granian ASGI + api/http/buffering.py), `serve-uncapped` (the
same with the per-address body cap and the minimum body rate off, as before they existed), `sync` (the old
default), `gthread` and `gevent` (gunicorn workers), `waitress`, `granian-wsgi` (granian's own WSGI
interface); a stack whose package is not installed (`pip install gunicorn gevent waitress`) is skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness.procs import (
    BenchError,
    Processes,
    Service,
    exit_with,
    find_tokenvault,
    free_port,
    install_signal_handlers,
    venv_python,
    wait_ready,
)

STACKS = ("serve", "serve-uncapped", "sync", "gthread", "gevent", "waitress", "granian-wsgi")
# What `serve-uncapped` turns off (api/http/buffering.py, README "Serving").
UNCAPPED = {"TOKENVAULT_BODIES_PER_ADDRESS": "0", "TOKENVAULT_MIN_BODY_BYTES_PER_SECOND": "0"}
ATTACKER = "127.0.0.2"
NEEDS = {"sync": "gunicorn", "gthread": "gunicorn", "gevent": "gevent", "waitress": "waitress"}
BODY = json.dumps({"kind": "text", "value": "slow-client bench"}).encode()


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    connections: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies) or [float("nan")]
        return {"requests": len(self.latencies), "errors": self.errors, "connections": self.connections,
                "rps": round(len(self.latencies) / self.seconds, 1) if self.seconds else 0.0,
                "p50_ms": round(statistics.median(ordered) * 1000, 2),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
                "max_ms": round(ordered[-1] * 1000, 2)}


def legit_load(port: int, key: str, seconds: float, clients: int) -> Phase:
    """`clients` threads, each on one keep-alive connection (a new one only if the server closed it)."""
    phase, lock = Phase(), threading.Lock()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    deadline = time.monotonic() + seconds

    def run() -> None:
        conn: http.client.HTTPConnection | None = None
        mine: list[float] = []
        errors = opened = 0
        while time.monotonic() < deadline:
            if conn is None:
                conn, opened = http.client.HTTPConnection("127.0.0.1", port, timeout=10), opened + 1
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/tokens", BODY, headers)
                response = conn.getresponse()
                response.read()
                if response.status != 201:
                    errors += 1
                mine.append(time.perf_counter() - started)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            phase.latencies += mine
            phase.errors += errors
            phase.connections += opened

    threads = [threading.Thread(target=run) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.monotonic() - started
    return phase


class SlowClients:
    """`count` connections that trickle, each reopened when the server drops it, in a thread of their own."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count, self.reopened = port, count, 0
        self.body_held: list[float] = []  # seconds from a body trickler's head to the server's answer
        self.body_answers: Counter[str] = Counter()
        self.loop = asyncio.new_event_loop()
        self.stopping = False
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),))

    async def one(self, index: int) -> None:
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(ATTACKER, 0))
            except OSError:
                await asyncio.sleep(0.5)
                continue
            started, answer = time.monotonic(), None
            try:
                # Bodies go to the login endpoint: it reads its body before any credential is checked.
                writer.write(b"POST /v1/auth/login HTTP/1.1\r\n" if index % 2 else b"POST /v1/tokens HTTP/1.1\r\n")
                writer.write(b"Host: 127.0.0.1\r\n")
                if index % 2:
                    writer.write(b"Content-Type: application/json\r\nContent-Length: 65536\r\n\r\n")
                answer = asyncio.ensure_future(reader.read(64)) if index % 2 else None
                while not self.stopping:
                    if answer is not None:  # a body trickler watches for the server's answer meanwhile
                        with contextlib.suppress(TimeoutError):
                            head = await asyncio.wait_for(asyncio.shield(answer), 2)
                            self.body_held.append(time.monotonic() - started)
                            self.body_answers[head.split(b" ", 2)[1].decode() if head else "closed"] += 1
                            self.reopened += 1
                            await asyncio.sleep(0.5)  # then again, as an attacker would
                            break
                    else:
                        await asyncio.sleep(2)
                    writer.write(b"{" if index % 2 else f"X-Slow-{index}: a\r\n".encode())
                    await writer.drain()
            except OSError:
                self.reopened += 1
            finally:
                if answer is not None:
                    answer.cancel()
                writer.close()

    async def main(self) -> None:
        tasks = []
        for index in range(self.count):
            tasks.append(asyncio.ensure_future(self.one(index)))
            await asyncio.sleep(0.005)
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        time.sleep(max(2.0, self.count * 0.005 + 1))  # all connected before the measured phase
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping = True
        self.thread.join(timeout=10)


def server_argv(stack: str, python: Path, tokenvault: Path, port: int, workers: int, threads: int) -> list[str]:
    if stack in ("serve", "serve-uncapped"):
        return [str(tokenvault), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if stack in ("sync", "gthread", "gevent"):  # the old api/gunicorn_conf.py's settings that matter here
        return [str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
                "--worker-class", stack, "--threads", str(threads if stack == "gthread" else 1), "--timeout", "30",
                "--keep-alive", "5", "--no-control-socket", "api.http.app:wsgi_app()"]
    if stack == "waitress":  # one process: waitress has no workers of its own
        return [str(python), "-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={threads * workers}",
                "--connection-limit=2000", "--call", "api.http.app:wsgi_app"]
    return [str(python), "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads), "--factory", "api.http.app:wsgi_app"]


def drain_seconds(service: Service, port: int, key: str) -> float:
    """SIGTERM while a request is being sent: seconds until the server exits (the request must finish)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/tokens", BODY, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    started = time.monotonic()
    os.killpg(service.process.pid, signal.SIGTERM)
    with contextlib.suppress(OSError, http.client.HTTPException):
        conn.getresponse().read()
    try:
        service.process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        return float("inf")
    return round(time.monotonic() - started, 2)


def measure(stack: str, args: argparse.Namespace, work: Path, processes: Processes) -> dict[str, object]:
    tokenvault = find_tokenvault()
    python = venv_python(tokenvault)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENVAULT_", "PROMETHEUS_"))}
    env.update(TOKENVAULT_DATA_DIR=str(work / f"var-{stack}"), TOKENVAULT_RATE_LIMIT="1000000/second",
               TOKENVAULT_LOG_LEVEL="warning", PROMETHEUS_MULTIPROC_DIR=str(work / f"metrics-{stack}"),
               TOKENVAULT_THREADS=str(args.threads), **(UNCAPPED if stack == "serve-uncapped" else {}))
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], mode=0o700)
    subprocess.run([str(tokenvault), "init"], env=env, check=True, capture_output=True)
    created = subprocess.run([str(tokenvault), "clients", "create", "--name", "bench", "--role", "checkout"],
                             env=env, check=True, capture_output=True, text=True)
    key = json.loads(created.stdout)["api_key"]
    port = free_port()
    service = processes.spawn(stack, server_argv(stack, python, tokenvault, port, args.workers, args.threads), env,
                              f"http://127.0.0.1:{port}", "/readyz", work / f"{stack}.log")
    wait_ready(service)
    legit_load(port, key, 2, args.clients)  # warm up
    quiet = legit_load(port, key, args.duration, args.clients)
    with SlowClients(port, args.slow) as slow_clients:
        slow = legit_load(port, key, args.duration, args.clients)
    drained = drain_seconds(service, port, key)
    held = sorted(slow_clients.body_held) or [float("nan")]
    out: dict[str, object] = {"stack": stack, "quiet": quiet.summary(), "slow": slow.summary(),
                              "slow_reopened": slow_clients.reopened, "drain_s": drained,
                              "slow_body_answers": dict(slow_clients.body_answers),
                              "slow_body_held_s": {"median": round(statistics.median(held), 2),
                                                   "max": round(held[-1], 2)}}
    ratio = slow.summary()["rps"] / quiet.summary()["rps"] if quiet.summary()["rps"] else 0.0
    out["slow_over_quiet"] = round(ratio, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--slow", type=int, default=200, help="slow connections (default 200)")
    parser.add_argument("--duration", type=float, default=60, help="seconds per phase (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="legitimate keep-alive clients (default 8)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="threads per worker where the stack has them")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    install_signal_handlers()
    results = []
    for stack in args.stacks.split(","):
        if stack not in STACKS:
            raise BenchError(f"unknown stack {stack!r}; choose from {', '.join(STACKS)}")
        if stack in NEEDS and importlib.util.find_spec(NEEDS[stack]) is None:
            print(f"{stack}: skipped ({NEEDS[stack]} not installed)", file=sys.stderr)
            continue
        processes = Processes()
        with tempfile.TemporaryDirectory(prefix="tokenvault-slow-") as work:
            try:
                result = measure(stack, args, Path(work), processes)
            finally:
                processes.stop_all()
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    exit_with(main)
