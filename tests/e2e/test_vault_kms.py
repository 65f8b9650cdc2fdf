"""End to end with TOKENVAULT_KMS=vault: `tokenvault serve` under gunicorn against a real OpenBao (issue #3).

Set up as deploy/vault/README.md says: an *admin* AppRole (service + admin policies)
runs `tokenvault init`, which enables the transit mount and creates the KEK; the
service runs with an AppRole holding only the least-privilege service policy, its
secret id read from a file (VAULT_SECRET_ID_FILE).

The fault tests each get an OpenBao dev server of their own and run the service with
TOKENVAULT_KEY_CACHE_SECONDS=1, so cached domain keys expire fast and every request
soon needs Vault again: killing, sealing and token revocation then show at once.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from api.http.app import create_app
from api.settings import Settings
from api.wiring import build
from tests.conftest import make_components
from tests.support.openbao import (
    AppRole,
    OpenBao,
    approle_token_accessors,
    enable_approle,
    external_openbao,
    openbao_server,
    start_openbao,
)
from tests.support.server import BIN, Server, running_server

SERVICE_POLICY = ("tokenvault-service.hcl",)
ADMIN_POLICIES = ("tokenvault-service.hcl", "tokenvault-admin.hcl")
CACHE_SECONDS = 1.0
# Requests sent this long after a fault must all see it: the key cache window, plus a
# margin for a key unwrapped just before the fault while its request was in flight.
FAULT_VISIBLE_AFTER = CACHE_SECONDS + 0.3
FAULT_ENV = {"TOKENVAULT_KEY_CACHE_SECONDS": str(CACHE_SECONDS)}
PAN = "4111111111111111"
CARD = {"pan": PAN, "exp_month": 12, "exp_year": 2099}


# -- setup, as deploy/vault/README.md describes it ----------------------------------------------------


@dataclass
class VaultSetup:
    server: OpenBao
    key_name: str
    admin: AppRole
    service: AppRole
    admin_env: dict[str, str]
    service_env: dict[str, str]


def _approle_env(server: OpenBao, key_name: str, role: AppRole, secret_file: Path) -> dict[str, str]:
    secret_file.write_text(role.secret_id + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    return {
        "TOKENVAULT_KMS": "vault",
        "VAULT_ADDR": server.addr,
        "VAULT_ROLE_ID": role.role_id,
        "VAULT_SECRET_ID_FILE": str(secret_file),
        "VAULT_SECRET_ID": "",  # the file only: both set is a configuration error
        "VAULT_TOKEN": "",  # TokenVault never sees the root token
        "VAULT_NAMESPACE": "",
        "TOKENVAULT_VAULT_KEY": key_name,
    }


def vault_setup(server: OpenBao, workdir: Path) -> VaultSetup:
    """Policies and the two AppRoles for a fresh key name; the transit mount is left to `init`."""
    key_name = f"e2e-{secrets.token_hex(4)}"
    admin = enable_approle(server, key_name=key_name, policy_files=ADMIN_POLICIES, token_ttl="15m")
    service = enable_approle(server, key_name=key_name, policy_files=SERVICE_POLICY)
    credentials = workdir / "vault-credentials"
    credentials.mkdir(mode=0o700, parents=True)
    return VaultSetup(
        server=server,
        key_name=key_name,
        admin=admin,
        service=service,
        admin_env=_approle_env(server, key_name, admin, credentials / "admin.secret-id"),
        service_env=_approle_env(server, key_name, service, credentials / "service.secret-id"),
    )


def run_cli(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "TOKENVAULT_DATA_DIR": str(data_dir), "TOKENVAULT_LOG_LEVEL": "warning", **env}
    return subprocess.run([str(BIN), *args], env=full, capture_output=True, text=True, timeout=120)


@dataclass
class Service:
    server: Server
    vault: VaultSetup
    data_dir: Path
    checkout: str
    gateway: str
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.server.url

    def tokenize(self, session: requests.Session | None = None, timeout: float = 10) -> requests.Response:
        return (session or self.session).post(self.url + "/v1/tokens", json={"kind": "card", "value": CARD},
                                              headers=bearer(self.checkout), timeout=timeout)

    def detokenize(self, tokens: list[str]) -> requests.Response:
        return self.session.post(self.url + "/v1/detokenize", json={"tokens": tokens, "purpose": "payment"},
                                 headers=bearer(self.gateway), timeout=10)

    def ready(self) -> requests.Response:
        return self.session.get(self.url + "/readyz", timeout=10)

    def count_tokens(self) -> int:
        with sqlite3.connect(self.data_dir / "tokenvault.db", timeout=30) as db:
            count: int = db.execute("SELECT count(*) FROM tokens").fetchone()[0]
        return count

    def stored(self, tokens: list[str]) -> set[str]:
        found: set[str] = set()
        with sqlite3.connect(self.data_dir / "tokenvault.db", timeout=30) as db:
            for start in range(0, len(tokens), 500):
                chunk = tokens[start : start + 500]
                query = "SELECT token FROM tokens WHERE token IN ({})".format(",".join("?" * len(chunk)))
                found |= {row[0] for row in db.execute(query, chunk)}
        return found

    def booted_workers(self) -> set[int]:
        """Workers that finished booting: each audits its `service_start` (detail `pid=<pid> ...`)."""
        with sqlite3.connect(self.data_dir / "tokenvault.db", timeout=30) as db:
            details = [row[0] for row in db.execute("SELECT detail FROM audit_events WHERE action = 'service_start'")]
        started = {int(m.group(1)) for d in details if (m := re.match(r"pid=(\d+)", d or ""))}
        return started & self.workers()

    def workers(self) -> set[int]:
        """gunicorn worker pids: a restart (of the service or a worker) changes them."""
        pid = self.server.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(child) for child in children}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_code(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


@contextmanager
def vault_service(bao: OpenBao, workdir: Path, **extra_env: str) -> Iterator[Service]:
    """`tokenvault init` with the admin role, then `init` + `serve` with the service role only."""
    setup = vault_setup(bao, workdir)
    data_dir = workdir / "var"
    data_dir.mkdir(parents=True)
    done = run_cli(data_dir, setup.admin_env, "init")
    assert done.returncode == 0, done.stderr
    assert "created key-encryption key in the vault provider" in done.stderr
    # running_server runs `init` again, now with the service role: idempotent, read-only on the key.
    with running_server(data_dir, **setup.service_env, **extra_env) as server:
        # API clients made in-process with the service role (a CLI run per client costs seconds).
        parts = build(Settings.from_env({**server.env, "TOKENVAULT_LOG_LEVEL": "warning"}))
        try:
            checkout = parts.clients.create("e2e-checkout", "checkout")[1].expose()
            gateway = parts.clients.create("e2e-gateway", "payment_gateway")[1].expose()
        finally:
            parts.engine.dispose()
        service = Service(server=server, vault=setup, data_dir=data_dir, checkout=checkout, gateway=gateway)
        # /readyz answers once *one* worker is up; faults must wait for all of them (see
        # test_worker_booting_during_a_vault_outage_does_not_take_the_service_down).
        count = int(server.env["TOKENVAULT_WORKERS"])
        wait_for(lambda: len(service.workers()) == count and service.booted_workers() == service.workers(), 30,
                 "every worker to boot")
        try:
            yield service
        finally:
            service.session.close()


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    """A dev server of this test's own, to kill, seal or revoke on."""
    if external_openbao() is not None:
        pytest.skip("fault tests need an OpenBao of their own, not TOKENVAULT_TEST_VAULT_ADDR")
    server = start_openbao(tmp_path / "openbao")
    yield server
    server.stop()


def service_accessors(bao: OpenBao, role_name: str) -> set[str]:
    return set(approle_token_accessors(bao, role_name))


def unseal_key(bao: OpenBao) -> str:
    """The dev server prints its unseal key at start; start_openbao keeps its output in `log`."""
    assert bao.log is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        match = re.search(r"^Unseal Key: (\S+)\s*$", bao.log.read_text(errors="replace"), re.MULTILINE)
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise AssertionError("the dev server printed no unseal key")


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request left
    took: float
    status: int
    code: str | None
    token: str | None


class TokenizeLoop(threading.Thread):
    """A client tokenizing cards one by one, recording every answer."""

    def __init__(self, service: Service) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.answers: list[Answer] = []
        self.transport_errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with requests.Session() as session:
            while not self.halt.is_set():
                sent = time.monotonic()
                try:
                    response = self.service.tokenize(session, timeout=30)
                except requests.RequestException as exc:  # no answer: the outcome would be unknown
                    self.transport_errors.append(type(exc).__name__)
                    continue
                took = time.monotonic() - sent
                token = response.json().get("token") if response.status_code == 201 else None
                self.answers.append(Answer(sent, took, response.status_code, error_code(response), token))

    def created(self) -> int:
        return sum(1 for answer in list(self.answers) if answer.status == 201)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)
        assert not self.is_alive()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# -- the happy path ----------------------------------------------------------------------------------


def test_tokenize_and_detokenize_over_http_with_vault_kms(tmp_path: Path) -> None:
    bao = openbao_server(tmp_path / "openbao")
    try:
        # Without the admin policy, `init` cannot create the KEK: it fails closed.
        refused_setup = vault_setup(bao, tmp_path / "refused")
        refused = run_cli(tmp_path / "refused" / "var", refused_setup.service_env, "init")
        assert refused.returncode == 3 and "permission denied" in refused.stderr, refused.stderr
        assert refused_setup.service.secret_id not in refused.stderr + refused.stdout

        with vault_service(bao, tmp_path / "svc") as service:
            key = bao.client().secrets.transit.read_key(name=service.vault.key_name)["data"]
            assert key["type"] == "aes256-gcm96" and key["exportable"] is False
            assert key["allow_plaintext_backup"] is False and key["deletion_allowed"] is False
            assert service.ready().json() == {"status": "ready"}

            created = service.tokenize()
            assert created.status_code == 201, created.text
            token = created.json()["token"]
            assert token != PAN and token.endswith(PAN[-4:])
            batch = service.session.post(service.url + "/v1/tokens/batch", headers=bearer(service.checkout),
                                         timeout=10, json={"items": [
                                             {"kind": "card", "subject_id": "cust-1",
                                              "value": {"pan": "5555555555554444", "exp_month": 3,
                                                        "exp_year": 2099}},
                                             {"kind": "cvv", "value": "123"}]})
            assert batch.status_code == 200, batch.text
            more = [item["token"] for item in batch.json()["results"]]

            read = service.detokenize([token, *more])
            assert read.status_code == 200, read.text
            values = [item["value"] for item in read.json()["results"]]
            assert values[0]["pan"] == PAN
            assert values[1]["pan"] == "5555555555554444"
            assert values[2] == "123"
            # Every wrapped domain key is a Transit ciphertext of this key.
            with sqlite3.connect(service.data_dir / "tokenvault.db") as db:
                wrapped = [row[0] for row in db.execute("SELECT wrapped FROM domain_keys")]
            assert wrapped and all(w.startswith("vault:v1:") for w in wrapped)
    finally:
        bao.stop()


# -- faults, each on an OpenBao of its own ---------------------------------------------------------


def test_killed_openbao_answers_503_fast_and_loses_no_acknowledged_token(
    own_openbao: OpenBao, tmp_path: Path
) -> None:
    with vault_service(own_openbao, tmp_path, **FAULT_ENV) as service:
        before = service.count_tokens()
        loop = TokenizeLoop(service)
        loop.start()
        try:
            wait_for(lambda: loop.created() >= 20, 20, "tokens before the kill")
            killed = time.monotonic()
            own_openbao.kill()  # mid-run: the client keeps tokenizing
            wait_for(lambda: sum(1 for a in list(loop.answers) if a.sent > killed + FAULT_VISIBLE_AFTER) >= 30,
                     20, "answers after the cache window")
        finally:
            loop.stop()

        assert loop.transport_errors == []  # every request got an answer
        answers = loop.answers
        assert {a.status for a in answers} <= {201, 503}, {a.status for a in answers}
        # Also when the audit key is the first to need Vault (see the test after this one).
        assert {a.code for a in answers if a.status == 503} == {"key_service_unavailable"}
        late = [a for a in answers if a.sent > killed + FAULT_VISIBLE_AFTER]
        assert [a.status for a in late] == [503] * len(late)  # at most the cache window after the kill
        first_503 = min(a.sent + a.took for a in answers if a.status == 503) - killed
        assert first_503 <= FAULT_VISIBLE_AFTER

        ready = service.ready()
        assert ready.status_code == 503 and error_code(ready) == "key_service_unavailable"

        # Nothing half-written, nothing acknowledged lost: the new rows are exactly the 201s.
        acknowledged = [a.token for a in answers if a.status == 201 and a.token]
        assert len(acknowledged) == len(set(acknowledged)) == loop.created()
        assert service.count_tokens() - before == len(acknowledged)
        assert service.stored(acknowledged) == set(acknowledged)

        # Circuit breaker: a dead Vault costs milliseconds per request, never a long timeout.
        timings = []
        for _ in range(30):
            started = time.perf_counter()
            response = service.tokenize()
            timings.append(time.perf_counter() - started)
            assert response.status_code == 503 and error_code(response) == "key_service_unavailable"
        started = time.perf_counter()
        assert service.ready().status_code == 503
        ready_took = time.perf_counter() - started
        unavailable = [a.took for a in answers if a.status == 503]
        print(f"\nkill: {len(acknowledged)} tokens acknowledged and stored, {len(unavailable)} answers 503, "
              f"first 503 {first_503:.2f}s after the kill; 503 latency during the loop: median "
              f"{statistics.median(unavailable) * 1000:.1f} ms, max {max(unavailable) * 1000:.0f} ms; "
              f"afterwards (breakers open): median {statistics.median(timings) * 1000:.1f} ms, "
              f"max {max(timings) * 1000:.0f} ms; readyz {ready_took * 1000:.0f} ms")
        assert max(unavailable + timings) < 1.0 and ready_took < 1.0
        # Once both workers' breakers are open no request waits for the network.
        assert statistics.median(timings) < 0.05


def test_sealed_openbao_answers_503_then_recovers_after_unseal(own_openbao: OpenBao, tmp_path: Path) -> None:
    key = unseal_key(own_openbao)
    # A short breaker reset keeps the test short; recovery then takes at most that plus the cache window.
    with vault_service(own_openbao, tmp_path, **FAULT_ENV, TOKENVAULT_VAULT_BREAKER_RESET="2") as service:
        first = service.tokenize()
        assert first.status_code == 201
        earlier = first.json()["token"]
        workers = service.workers()

        own_openbao.seal()
        time.sleep(FAULT_VISIBLE_AFTER)
        for _ in range(12):  # enough for both workers' breakers to open
            refused = service.tokenize()
            assert refused.status_code == 503 and error_code(refused) == "key_service_unavailable", refused.text
        refused = service.detokenize([earlier])
        assert refused.status_code == 503 and error_code(refused) == "key_service_unavailable"
        ready = service.ready()
        assert ready.status_code == 503 and error_code(ready) == "key_service_unavailable"

        assert own_openbao.client().sys.submit_unseal_key(key)["sealed"] is False
        unsealed = time.monotonic()
        # Each worker recovers on its own once its breaker lets a probe through: wait for a
        # run of successes long enough to have gone through both.
        made: list[str] = []
        first_ok: list[float] = []

        def serving() -> bool:
            response = service.tokenize()
            if response.status_code != 201:
                assert error_code(response) == "key_service_unavailable", response.text
                made.clear()
                return False
            first_ok.append(time.monotonic())
            made.append(response.json()["token"])
            return len(made) >= 12

        wait_for(serving, 20, "tokenization after unseal")
        recovery, steady = first_ok[0] - unsealed, time.monotonic() - unsealed
        read = service.detokenize([earlier, *made])
        assert read.status_code == 200
        assert [item.get("value", {}).get("pan") for item in read.json()["results"]] == [PAN] * (1 + len(made))
        assert service.ready().status_code == 200
        # Recovered on its own: the same gunicorn master and workers.
        assert service.server.process.poll() is None and service.workers() == workers
        print(f"\nseal: first success {recovery:.2f}s after unseal, 12 in a row by {steady:.2f}s")


def test_revoked_service_token_is_replaced_by_a_fresh_approle_login(own_openbao: OpenBao, tmp_path: Path) -> None:
    with vault_service(own_openbao, tmp_path, **FAULT_ENV) as service:
        made = []
        for _ in range(6):
            response = service.tokenize()
            assert response.status_code == 201
            made.append(response.json()["token"])
        role = service.vault.service.role_name
        revoked = service_accessors(own_openbao, role)
        assert revoked
        for accessor in revoked:  # every token the service role holds, the workers' included
            own_openbao.client().auth.token.revoke_accessor(accessor)
        assert service_accessors(own_openbao, role) == set()

        time.sleep(FAULT_VISIBLE_AFTER)  # cached keys expire: the next requests need Vault
        for _ in range(20):
            response = service.tokenize()
            assert response.status_code == 201, response.text
            made.append(response.json()["token"])
        read = service.detokenize(made)
        assert read.status_code == 200
        assert all(item.get("value", {}).get("pan") == PAN for item in read.json()["results"])
        assert service.ready().status_code == 200
        fresh = service_accessors(own_openbao, role)
        assert fresh and not fresh & revoked  # the workers logged in again with AppRole


def test_key_service_outage_is_reported_as_such_not_as_audit_failure(
    own_openbao: OpenBao, tmp_path: Path, sqlite_url: str
) -> None:
    """Deterministic, in one process: the audit key is the only key the request needs from Vault.

    Over HTTP this happens whenever the auth key is still cached but the audit key has just
    expired: the kill test above saw it now and then as 503 audit_unavailable before commit
    4f31a6f. Here every cached key expires, the auth key alone is fetched again, Vault dies,
    and a detokenize of an unknown token (which opens no data key) needs only the audit key.
    deploy/vault/README.md: every failure to reach Vault answers 503 key_service_unavailable.
    """
    own_openbao.client().sys.enable_secrets_engine(backend_type="transit", path="transit")
    parts = make_components(tmp_path / "data", sqlite_url,
                            TOKENVAULT_KMS="vault", VAULT_ADDR=own_openbao.addr, VAULT_TOKEN=own_openbao.root_token,
                            TOKENVAULT_VAULT_KEY=f"e2e-{secrets.token_hex(4)}",
                            TOKENVAULT_KEY_CACHE_SECONDS="1", TOKENVAULT_AUTH_CACHE_SECONDS="60")
    try:
        client = create_app(parts=parts).test_client()
        gateway = bearer(parts.clients.create("gw", "payment_gateway")[1].expose())
        unknown = {"tokens": ["tok_email_" + "A" * 32], "purpose": "payment"}
        warm = client.post("/v1/detokenize", json=unknown, headers=gateway)  # the API key is now cached
        assert warm.status_code == 200
        time.sleep(1.1)  # every cached domain key has expired
        with parts.engine.connect() as conn:
            parts.keys.hmac_key(conn, "auth")  # the auth key alone is unwrapped again
        own_openbao.kill()
        answer = client.post("/v1/detokenize", json=unknown, headers=gateway)
        assert answer.status_code == 503
        assert answer.get_json()["error"]["code"] == "key_service_unavailable"
    finally:
        parts.engine.dispose()


def test_a_writer_announced_during_an_outage_reports_the_key_service(
    own_openbao: OpenBao, tmp_path: Path, sqlite_url: str
) -> None:
    """A new audit writer signs its announcement with Transit (#16); Vault being down says so (#3)."""
    own_openbao.client().sys.enable_secrets_engine(backend_type="transit", path="transit")
    parts = make_components(tmp_path / "data", sqlite_url,
                            TOKENVAULT_KMS="vault", VAULT_ADDR=own_openbao.addr, VAULT_TOKEN=own_openbao.root_token,
                            TOKENVAULT_VAULT_KEY=f"e2e-{secrets.token_hex(4)}", TOKENVAULT_AUTH_CACHE_SECONDS="60")
    try:
        client = create_app(parts=parts).test_client()
        gateway = bearer(parts.clients.create("gw", "payment_gateway")[1].expose())
        unknown = {"tokens": ["tok_email_" + "A" * 32], "purpose": "payment"}
        assert client.post("/v1/detokenize", json=unknown, headers=gateway).status_code == 200  # keys cached
        parts.engine.dispose()  # the next event goes through a new connection: a new writer to announce
        own_openbao.kill()
        answer = client.post("/v1/detokenize", json=unknown, headers=gateway)
        assert answer.status_code == 503
        assert answer.get_json()["error"]["code"] == "key_service_unavailable"
    finally:
        parts.engine.dispose()


def test_worker_booting_during_a_vault_outage_does_not_take_the_service_down(
    own_openbao: OpenBao, tmp_path: Path
) -> None:
    key = unseal_key(own_openbao)
    with vault_service(own_openbao, tmp_path, **FAULT_ENV, TOKENVAULT_VAULT_BREAKER_RESET="1") as service:
        assert service.tokenize().status_code == 201
        own_openbao.seal()
        victim = min(service.workers())
        os.kill(victim, 9)  # a worker dies (OOM, bug, timeout); gunicorn boots a replacement
        time.sleep(3)
        assert service.server.process.poll() is None, "the whole service exited"
        ready = service.ready()
        assert ready.status_code == 503 and error_code(ready) == "key_service_unavailable"
        own_openbao.client().sys.submit_unseal_key(key)
        wait_for(lambda: service.tokenize().status_code == 201, 20, "tokenization after unseal")
