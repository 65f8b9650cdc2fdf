"""Start the real service (`tokenvault init` + `tokenvault serve`, gunicorn) on a free loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyotp
import requests

from tests.support.operators import PASSWORD, seed_of
from vault.access.totp import STEP_SECONDS

BIN = Path(sys.executable).with_name("tokenvault")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([str(BIN), *args], env=self.env, capture_output=True, text=True, input=stdin,
                              timeout=60, check=True)
        with self.log.open("a") as handle:
            handle.write(done.stderr)
        return done.stdout

    def client_key(self, role: str) -> str:
        key: str = json.loads(self.cli("clients", "create", "--name", f"e2e-{role}", "--role", role))["api_key"]
        return key

    def operator_session(self, role: str, username: str) -> str:
        """A human role's credential: created on the host, enrolled (CLI), logged in; a session token."""
        token, _ = self.operator_session_with_step_up(role, username)
        return token

    def operator_session_with_step_up(self, role: str, username: str) -> tuple[str, str]:
        """A session token and one unspent TOTP code for a step-up (enrolled one step back, logged in now)."""
        created = json.loads(self.cli("operators", "create", "--name", username, "--role", role).splitlines()[0])
        code = created["enrolment_code"]
        started = json.loads(self.cli("operators", "enrol", stdin=f"{code}\n{PASSWORD}\n").splitlines()[0])
        if time.time() % STEP_SECONDS > STEP_SECONDS - 12:  # a step boundary between here and the login would
            time.sleep(STEP_SECONDS - time.time() % STEP_SECONDS + 0.1)  # age the confirm code out of the drift
        totp, now = pyotp.TOTP(seed_of(started["totp_uri"])), int(time.time())
        self.cli("operators", "confirm", stdin=f"{code}\n{totp.at(now - STEP_SECONDS)}\n")
        done = self.cli("auth", "login", "--username", username, "--password-stdin",
                        "--totp", totp.at(now), stdin=PASSWORD + "\n")
        token: str = json.loads(done)["session_token"]
        return token, totp.at(now + STEP_SECONDS)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start")
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready in time")


@contextmanager
def running_server(data_dir: Path, **extra_env: str) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "TOKENVAULT_DATA_DIR": str(data_dir), "TOKENVAULT_BIND": f"127.0.0.1:{port}",
           "TOKENVAULT_WORKERS": "2", **extra_env}
    log = data_dir.parent / "server.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN), "init"], env=env, check=True, capture_output=True, timeout=120)
    with log.open("ab") as handle:
        process = subprocess.Popen([str(BIN), "serve"], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield Server(url=url, env=env, log=log, process=process)
    finally:
        if process.poll() is None:
            # To the master only, as `docker stop` does to PID 1: the master stops its workers. A signal to
            # the whole group can reach a worker before the master marks it stopping ("unexpected exit").
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
