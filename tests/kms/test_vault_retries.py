"""Retry, timeout and breaker rules of VaultTransitProvider, against a scripted HTTP stub.

A real server will not answer 412/429/502/503 on demand, so these rules are checked
against a stub; everything else runs against a real OpenBao (test_vault_transit.py,
test_vault_slow.py, tests/e2e/test_vault_kms.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from kms.vault_transit import VaultConfig, VaultTransitProvider
from vault.errors import KeyServiceUnavailable
from vault.keys.provider import wrapped_version
from vault.secret import Secret

# -- retry rules, against a scripted stub -----------------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    """Answers from a per-path script of (status, body); the last entry repeats."""

    script: ClassVar[dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
        self.seen.append(path)
        steps = self.script.get(path, [(404, {"errors": []})])
        status, answer = steps.pop(0) if len(steps) > 1 else steps[0]
        if answer == {"echo": True}:
            items = body.get("batch_input", [])
            answer = {
                "data": {
                    "batch_results": [
                        {"ciphertext": "vault:v1:" + item["plaintext"]}
                        if "plaintext" in item
                        else {"plaintext": item["ciphertext"].split(":")[2]}
                        for item in items
                    ]
                }
            }
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (read-timeout test)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    class handler(_Stub):  # fresh script and log per test
        script: ClassVar[dict[str, list[tuple[int, dict[str, Any]]]]] = {}
        seen: ClassVar[list[str]] = []

    handler.script["/v1/auth/token/lookup-self"] = [(200, {"data": {"ttl": 0, "renewable": False}})]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


def stub_provider(addr: str, sleeps: list[float], **overrides: Any) -> VaultTransitProvider:
    config = VaultConfig(
        addr=addr, token=Secret("stub-token"), key_name="k", backoff_base=0.05, backoff_max=0.2, max_retries=3
    )
    return VaultTransitProvider(config=replace(config, **overrides), sleep=sleeps.append)


@pytest.mark.parametrize("status", [412, 429, 502, 503])
def test_idempotent_calls_retry_transient_statuses(stub: tuple[str, type[_Stub]], status: int) -> None:
    addr, handler = stub
    handler.script["/v1/transit/encrypt/k"] = [
        (status, {"errors": ["busy"]}),
        (status, {"errors": []}),
        (200, {"echo": True}),
    ]
    sleeps: list[float] = []
    provider = stub_provider(addr, sleeps)
    _, wrapped = provider.generate()
    assert wrapped_version(wrapped) == 1
    assert handler.seen.count("/v1/transit/encrypt/k") == 3
    assert provider.calls == 4  # lookup-self + 3 attempts
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.05 and 0 <= sleeps[1] <= 0.1  # exponential, jittered


def test_retries_give_up_and_count_against_the_breaker(stub: tuple[str, type[_Stub]]) -> None:
    addr, handler = stub
    handler.script["/v1/transit/decrypt/k"] = [(503, {"errors": ["Vault is sealed"]})]
    sleeps: list[float] = []
    provider = stub_provider(addr, sleeps, breaker_failures=2)
    for _ in range(2):
        with pytest.raises(KeyServiceUnavailable, match="sealed"):
            provider.unwrap(["vault:v1:AAAA"])
    assert handler.seen.count("/v1/transit/decrypt/k") == 8  # 2 calls x (1 + 3 retries)
    assert len(sleeps) == 6 and max(sleeps) <= 0.2
    with pytest.raises(KeyServiceUnavailable, match="circuit open"):
        provider.unwrap(["vault:v1:AAAA"])
    assert handler.seen.count("/v1/transit/decrypt/k") == 8


@pytest.mark.parametrize("status", [500, 400, 404])
def test_other_statuses_are_not_retried(stub: tuple[str, type[_Stub]], status: int) -> None:
    addr, handler = stub
    handler.script["/v1/transit/decrypt/k"] = [(status, {"errors": ["no"]})]
    sleeps: list[float] = []
    provider = stub_provider(addr, sleeps)
    with pytest.raises(KeyServiceUnavailable, match=str(status)):
        provider.unwrap(["vault:v1:AAAA"])
    assert handler.seen.count("/v1/transit/decrypt/k") == 1 and sleeps == []


@pytest.mark.parametrize(
    ("path", "call"),
    [
        ("/v1/transit/keys/k/rotate", lambda p: p.rotate()),
        ("/v1/transit/keys/k/config", lambda p: p.set_min_decryption_version(1)),
    ],
    ids=["rotate", "config"],
)
def test_non_idempotent_calls_are_never_retried(stub: tuple[str, type[_Stub]], path: str, call: Any) -> None:
    addr, handler = stub
    handler.script[path] = [(503, {"errors": []})]
    sleeps: list[float] = []
    provider = stub_provider(addr, sleeps)
    with pytest.raises(KeyServiceUnavailable):
        call(provider)
    assert handler.seen.count(path) == 1 and sleeps == []


def test_key_creation_is_never_retried(stub: tuple[str, type[_Stub]]) -> None:
    addr, handler = stub
    handler.script["/v1/transit/keys/k"] = [(404, {"errors": []}), (502, {"errors": []})]
    handler.script["/v1/sys/mounts/transit"] = [(200, {"data": {"type": "transit"}})]
    provider = stub_provider(addr, [])
    with pytest.raises(KeyServiceUnavailable, match="create key"):
        provider.initialise()
    assert handler.seen.count("/v1/transit/keys/k") == 2  # one read, one create


def test_read_timeout_is_unavailable(stub: tuple[str, type[_Stub]]) -> None:
    addr, handler = stub
    original = handler._answer

    def slow(self: _Stub) -> None:
        if self.path.startswith("/v1/transit/"):
            time.sleep(0.5)
        original(self)

    handler.do_POST = slow
    handler.script["/v1/transit/encrypt/k"] = [(200, {"echo": True})]
    provider = stub_provider(addr, [], read_timeout=0.1)
    with pytest.raises(KeyServiceUnavailable, match="timed out"):
        provider.generate()
