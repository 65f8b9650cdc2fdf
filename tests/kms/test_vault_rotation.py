"""Key rotation (issue #6) on the Vault/OpenBao Transit provider, on SQLite and PostgreSQL.

10,000 card tokens, then a rotation job that creates a new Transit KEK version, rewraps
the domain keys with Transit rewrap and moves every data key under new domain keys;
every token must still read back, and retiring KEK version 1 must reach Transit's
`min_decryption_version`, after which a v1 ciphertext no longer decrypts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import hvac.exceptions
import pytest
from sqlalchemy import select

from api.wiring import Components
from tests.conftest import make_components
from tests.support.cards import HERE, fill, read_all
from tests.support.openbao import OpenBao
from vault.audit.trail import Actor
from vault.errors import KeyServiceUnavailable
from vault.storage.schema import domain_keys

ADMIN = Actor(id="admin", role="admin")
CACHE_SECONDS = 1.0


def vault_components(data_dir: Path, database_url: str, server: OpenBao, key_name: str) -> Components:
    # The root token, not the service AppRole: KeyLifecycle.start_rotation calls Transit
    # `rotate` and retire() calls `keys/<name>/config` (min_decryption_version), which only
    # the admin policy (deploy/vault/tokenvault-admin.hcl) grants; the service policy must not.
    return make_components(
        data_dir, database_url,
        TOKENVAULT_KMS="vault", VAULT_ADDR=server.addr, VAULT_TOKEN=server.root_token,
        TOKENVAULT_VAULT_KEY=key_name, TOKENVAULT_KEY_CACHE_SECONDS=str(CACHE_SECONDS),
    )


@pytest.fixture
def vault(tmp_path: Path, database_url: str, openbao: OpenBao, key_name: str) -> Iterator[Components]:
    parts = vault_components(tmp_path / "data", database_url, openbao, key_name)
    yield parts
    parts.engine.dispose()


def transit_key(server: OpenBao, key_name: str) -> dict[str, object]:
    key: dict[str, object] = server.client().secrets.transit.read_key(name=key_name)["data"]
    return key


def test_rotate_10000_tokens_then_retire_kek_version_1(vault: Components, openbao: OpenBao, key_name: str) -> None:
    expected = fill(vault, 10_000)
    with vault.engine.connect() as conn:
        old_wrapped = conn.execute(select(domain_keys.c.wrapped).where(domain_keys.c.active_for == "data")).scalar_one()
    assert old_wrapped.startswith("vault:v1:")

    before = vault.provider.calls
    job = vault.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    state = vault.lifecycle.run(job, batch=1000)
    kms_calls = vault.provider.calls - before
    assert state["status"] == "done" and state["done"] == state["total"] > 5000, state
    # Data keys are rewrapped locally under the new domain keys: Vault sees a handful of calls.
    assert kms_calls < 50, kms_calls
    assert transit_key(openbao, key_name)["latest_version"] == 2
    with vault.engine.connect() as conn:
        wrapped = list(conn.execute(select(domain_keys.c.wrapped)).scalars())
    assert wrapped and all(w.startswith("vault:v2:") for w in wrapped)

    read_all(vault, expected)
    assert vault.provider.unwrap([old_wrapped])[0] is not None  # v1 still usable until retired

    assert vault.lifecycle.retire(ADMIN, 2, HERE) == {"min_decryption_version": 2}
    assert transit_key(openbao, key_name)["min_decryption_version"] == 2
    assert vault.provider.unwrap([old_wrapped]) == [None]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        openbao.client().secrets.transit.decrypt_data(name=key_name, ciphertext=old_wrapped)

    time.sleep(CACHE_SECONDS + 0.1)  # cached domain keys expire: reads unwrap v2 ciphertexts again
    read_all(vault, dict(list(expected.items())[::20]))


def _unseal_key(server: OpenBao) -> str:
    """The dev server prints its banner (with the unseal key) a moment after it answers health checks."""
    assert server.log is not None
    deadline = time.monotonic() + 15
    while True:
        match = re.search(r"^Unseal Key: (\S+)\s*$", server.log.read_text(errors="replace"), re.MULTILINE)
        if match or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert match, "the dev server printed no unseal key"
    return match.group(1)


def test_rotation_job_resumes_after_a_vault_outage(
    tmp_path: Path, sqlite_url: str, destructive_openbao: OpenBao, key_name: str
) -> None:
    """A sealed (or unreachable) Vault mid-job leaves the job running, for `keys resume` to finish."""
    parts = vault_components(tmp_path / "data", sqlite_url, destructive_openbao, key_name)
    try:
        expected = fill(parts, 200)
        unseal = _unseal_key(destructive_openbao)
        job = parts.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
        destructive_openbao.seal()  # Vault goes away for a moment during the job
        with pytest.raises(KeyServiceUnavailable):
            parts.lifecycle.run(job, batch=50)
        destructive_openbao.client().sys.submit_unseal_key(unseal)
        time.sleep(0.2)
        assert job in parts.lifecycle.unfinished()  # what `tokenvault keys resume` works on
        state = parts.lifecycle.run(job, batch=50)
        assert state["status"] == "done" and state["done"] == state["total"], state
        read_all(parts, expected)
    finally:
        parts.engine.dispose()
