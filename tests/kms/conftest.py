"""Fixtures for the key-provider tests: a real OpenBao server and both providers.

Each xdist worker starts its own session server; each test gets a fresh Transit key,
so tests never see each other's versions. Destructive tests (kill, seal) get a
server of their own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kms.local import LocalKeyProvider
from kms.vault_transit import VaultConfig, VaultTransitProvider
from tests.support.openbao import OpenBao, ensure_transit, external_openbao, openbao_server, start_openbao
from vault.keys.provider import KeyProvider
from vault.secret import Secret

VaultFactory = Callable[..., VaultTransitProvider]


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_key_name() -> str:
    return f"test-{secrets.token_hex(6)}"


def vault_config(server: OpenBao, key_name: str, **overrides: Any) -> VaultConfig:
    """Test settings: short timeouts and backoff so failure tests stay fast."""
    settings: dict[str, Any] = {
        "addr": server.addr,
        "token": Secret(server.root_token),
        "key_name": key_name,
        "connect_timeout": 1.0,
        "read_timeout": 5.0,
        "max_retries": 2,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
        "breaker_failures": 3,
        "breaker_reset": 5.0,
    }
    settings.update(overrides)
    if "role_id" in overrides:
        settings.pop("token", None)
    return VaultConfig(**settings)


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    server = openbao_server(tmp_path_factory.mktemp("openbao"))
    ensure_transit(server)
    yield server
    server.stop()


@pytest.fixture
def destructive_openbao(tmp_path: Path) -> Iterator[OpenBao]:
    """A server of this test's own, to kill or seal."""
    if external_openbao() is not None:
        pytest.skip("kill/seal tests need a server of their own, not TOKENVAULT_TEST_VAULT_ADDR")
    server = start_openbao(tmp_path / "openbao-own")
    ensure_transit(server)
    yield server
    server.stop()


@pytest.fixture
def key_name() -> str:
    return new_key_name()


@pytest.fixture
def make_vault_provider(openbao: OpenBao, key_name: str) -> Iterator[VaultFactory]:
    """Providers on this test's key; keyword arguments override VaultConfig fields."""
    made: list[VaultTransitProvider] = []

    def make(
        server: OpenBao | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        **overrides: Any,
    ) -> VaultTransitProvider:
        extra: dict[str, Any] = {}
        if clock is not None:
            extra["clock"] = clock
        if sleep is not None:
            extra["sleep"] = sleep
        provider = VaultTransitProvider(config=vault_config(server or openbao, key_name, **overrides), **extra)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        provider.close()


@pytest.fixture
def make_local_provider(tmp_path: Path) -> Callable[[], LocalKeyProvider]:
    def make() -> LocalKeyProvider:
        return LocalKeyProvider(keyring_path=tmp_path / "keyring.json", master_key=Secret(secrets.token_bytes(32)))

    return make


@pytest.fixture
def local_provider(make_local_provider: Callable[[], LocalKeyProvider]) -> LocalKeyProvider:
    provider = make_local_provider()
    provider.initialise()
    return provider


@pytest.fixture
def vault_provider(make_vault_provider: VaultFactory) -> VaultTransitProvider:
    provider = make_vault_provider()
    provider.initialise()
    return provider


@pytest.fixture(params=["local", "vault"])
def fresh_provider(request: pytest.FixtureRequest) -> KeyProvider:
    """A provider whose KEK does not exist yet."""
    factory: Callable[[], KeyProvider] = request.getfixturevalue(f"make_{request.param}_provider")
    return factory()


@pytest.fixture(params=["local", "vault"])
def provider(request: pytest.FixtureRequest) -> KeyProvider:
    """The same contract, run against every provider."""
    chosen: KeyProvider = request.getfixturevalue(f"{request.param}_provider")
    return chosen
