"""Key lifecycle on SQLite and PostgreSQL with the local provider (Vault: tests/kms)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.wiring import Components, build
from tests.conftest import make_components
from tests.support.cards import CHECKOUT, GATEWAY, HERE, fill, read_all
from tests.vault.tokens.test_service import tokenize_one
from vault.audit.trail import Actor
from vault.errors import Conflict, Forbidden
from vault.storage.schema import data_keys, domain_keys, tokens
from vault.tokens.records import TokenRecord, TokenRequest

ADMIN = Actor(id="admin-1", role="admin")
CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]


@pytest.fixture
def vault(tmp_path: Path, database_url: str) -> Iterator[Components]:
    parts = make_components(tmp_path / "data", database_url, TOKENVAULT_KEY_CACHE_SECONDS="0.3")
    yield parts
    parts.engine.dispose()


def test_rotate_10000_tokens_then_retire(vault: Components) -> None:
    expected = fill(vault, 10_000)
    with vault.engine.connect() as conn:
        before = dict(conn.execute(select(tokens.c.token, tokens.c.ciphertext)).all())
    job = vault.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    state = vault.lifecycle.run(job, batch=700)
    assert state["status"] == "done" and state["done"] == state["total"] > 5000
    read_all(vault, expected)
    with vault.engine.connect() as conn:
        assert conn.execute(select(func.min(domain_keys.c.kek_version))).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(domain_keys)
                            .where(domain_keys.c.active_for.is_(None))).scalar_one() == 0
        after = dict(conn.execute(select(tokens.c.token, tokens.c.ciphertext)).all())
    assert after == before  # records untouched: only keys were rewrapped
    old_wrapped = vault.provider.wrap([vault.provider.generate()[0]])[0].replace(":v2:", ":v1:")
    assert vault.lifecycle.retire(ADMIN, 2, HERE) == {"min_decryption_version": 2}
    assert vault.provider.unwrap([old_wrapped]) == [None]
    assert vault.lifecycle.references_below(2) == 0
    read_all(vault, dict(list(expected.items())[:500]))


def test_retire_refuses_while_old_versions_are_referenced(vault: Components) -> None:
    fill(vault, 10)
    vault.provider.rotate()  # a new KEK version with nothing rewrapped yet
    with pytest.raises(Conflict) as refused:
        vault.lifecycle.retire(ADMIN, 2, HERE)
    assert "5 domain keys" in str(refused.value) or "domain keys still wrapped" in str(refused.value)


def test_concurrent_traffic_during_rotation_has_no_failures(vault: Components) -> None:
    expected = fill(vault, 2000)
    failures: list[object] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            made = vault.tokens.tokenize(CHECKOUT, [TokenRequest(kind="card", subject_id="s7", value={
                "pan": CARDS[0], "exp_month": 1, "exp_year": 2099})], HERE)[0]
            if not isinstance(made, TokenRecord):
                failures.append(made)
                continue
            got = vault.tokens.detokenize(GATEWAY, [made.token, *list(expected)[:20]], "payment", HERE)
            failures.extend(r.error for r in got if r.error is not None)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        job = vault.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
        assert vault.lifecycle.run(job, batch=100)["status"] == "done"
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    read_all(vault, expected)


def test_reencrypt_after_compromise(vault: Components) -> None:
    expected = fill(vault, 300)
    with vault.engine.connect() as conn:
        compromised = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == "data")).scalar_one()
        before = dict(conn.execute(select(tokens.c.token, tokens.c.ciphertext)).all())
        wrapped_before = dict(conn.execute(select(data_keys.c.id, data_keys.c.wrapped)).all())
    job = vault.lifecycle.start_reencrypt(ADMIN, compromised, HERE)
    assert vault.lifecycle.run(job, batch=64)["status"] == "done"
    with vault.engine.connect() as conn:
        after = dict(conn.execute(select(tokens.c.token, tokens.c.ciphertext)).all())
        wrapped_after = dict(conn.execute(select(data_keys.c.id, data_keys.c.wrapped)).all())
        gone = conn.execute(select(domain_keys.c.id).where(domain_keys.c.id == compromised)).first()
    assert set(after) == set(before)  # same tokens
    assert all(after[t] != before[t] for t in before)  # every ciphertext changed
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_before)  # new key material
    assert gone is None  # the compromised domain key is destroyed
    read_all(vault, expected)


def test_jobs_resume_and_refuse_a_second_runner(vault: Components) -> None:
    fill(vault, 1200)
    job = vault.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    other = type(vault.lifecycle)(engine=vault.engine, keys=vault.keys, provider=vault.provider,
                                  policy=vault.policy, trail=vault.trail, cache_seconds=0.3)
    seen: list[int] = []

    def stop_early(state: dict[str, object]) -> None:
        seen.append(int(state["done"]))  # type: ignore[call-overload]
        if len(seen) == 2:
            raise KeyboardInterrupt  # the runner dies mid-job, holding its lease

    with pytest.raises(KeyboardInterrupt):
        vault.lifecycle.run(job, batch=100, on_progress=stop_early)
    with pytest.raises(Conflict):
        other.run(job, batch=100)  # the lease is still held
    state = vault.lifecycle.run(job, batch=100)  # the same runner resumes
    assert state["status"] == "done" and state["done"] == state["total"]


def test_only_admins_manage_keys(vault: Components) -> None:
    for role in ("checkout", "payment_gateway", "auditor", "privacy_officer"):
        with pytest.raises(Forbidden):
            vault.lifecycle.inventory(Actor(id="x", role=role), HERE)
    listing = vault.lifecycle.inventory(ADMIN, HERE)
    assert listing["kek"]["latest_version"] == 1 and listing["kek"]["status"] == "ok"
    assert {d["purpose"] for d in listing["domain_keys"]} >= {"data", "cvv", "index", "auth", "audit"}
    assert vault.lifecycle.due(ADMIN, HERE) == []
    tokenize_one(vault, "email", "a@example.com")


def test_the_audit_signing_key_is_rewrapped_with_the_domain_keys(vault: Components) -> None:
    """After a KEK rotation and retirement, a new process still signs checkpoints (its seed was rewrapped)."""
    fill(vault, 10)
    vault.trail.checkpoint()
    state = vault.lifecycle.run(vault.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=False), batch=100)
    assert state["status"] == "done"
    assert vault.lifecycle.retire(ADMIN, 2, HERE) == {"min_decryption_version": 2}
    fresh = build(vault.settings)  # nothing cached: the seed must be unwrapped under KEK v2
    try:
        fill(fresh, 1)
        fresh.trail.checkpoint()
        with fresh.engine.connect() as conn:
            assert fresh.trail.verify(conn).intact
    finally:
        fresh.trail.close()
        fresh.engine.dispose()


def test_a_job_says_what_it_waits_for(vault: Components) -> None:
    """Issue #18: after its last record the job waited out the key-cache window silently ("eta 0s")."""
    fill(vault, 50)
    slow = type(vault.lifecycle)(engine=vault.engine, keys=vault.keys, provider=vault.provider,
                                 policy=vault.policy, trail=vault.trail, cache_seconds=1.5)
    job = slow.start_rotation(ADMIN, HERE, domain_keys_too=True)
    states: list[dict[str, object]] = []
    final = slow.run(job, batch=500, on_progress=states.append)
    waiting = [state for state in states if state["phase"] == "wait_key_caches"]
    assert waiting, [state["phase"] for state in states]
    assert "TOKENVAULT_KEY_CACHE_SECONDS=1.5" in str(waiting[0]["waiting_for"])
    assert 0 < float(waiting[0]["eta_seconds"]) <= 1.5  # type: ignore[arg-type]
    assert final["status"] == "done" and "waiting_for" not in final
