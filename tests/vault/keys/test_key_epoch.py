"""The key epoch (issue #18): a rotation of a small vault waits for the workers, not the 300 s cache window.

Two vault instances on one database (SQLite and PostgreSQL), each with its own key caches, as
two serving processes would be. The serving instance runs the heartbeat; the other starts and
runs the rotation job with the default TOKENVAULT_KEY_CACHE_SECONDS (300 s).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from api.wiring import Components
from tests.conftest import make_components
from tests.support.cards import HERE, fill
from tests.vault.tokens.test_service import tokenize_one
from vault.audit.trail import Actor
from vault.errors import Conflict
from vault.keys.hierarchy import read_epoch
from vault.keys.row_mac import RowMacs
from vault.storage.schema import data_keys, domain_keys, key_epoch, key_epoch_acks, key_jobs, tokens

ADMIN = Actor(id="admin-1", role="admin")
DEADLINE = 30.0  # far below the 300 s window, far above the few seconds the acknowledgements take


@pytest.fixture
def pair(tmp_path: Path, database_url: str) -> Iterator[tuple[Components, Components]]:
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    serving = make_components(tmp_path / "data", database_url, TOKENVAULT_MASTER_KEY=master)
    admin = make_components(tmp_path / "data", database_url, TOKENVAULT_MASTER_KEY=master)
    assert serving.settings.key_cache_seconds == 300.0
    yield serving, admin
    serving.epochs.stop()


def _run(parts: Components, job: str, seconds: float) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Run the job in a thread for at most `seconds`: its final state (None if still running) and progress."""
    states: list[dict[str, Any]] = []
    final: list[dict[str, Any]] = []

    def work() -> None:
        with contextlib.suppress(Conflict):  # stopped below: it lost its lease
            final.append(parts.lifecycle.run(job, batch=500, on_progress=states.append))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # end the runner (another owner takes its lease, as the vault would) so no thread
        with parts.engine.begin() as conn:  # outlives the test; a raw edit would fail the row's MAC instead
            RowMacs(parts.keys).update(
                conn,
                key_jobs,
                job,
                {"lease_owner": "test:stopper", "lease_until": datetime.now(UTC) + timedelta(hours=1)},
            )
        thread.join(10)
        assert not thread.is_alive()
    return (final[0] if final else None), states


def _active(parts: Components, purpose: str = "data") -> str:
    with parts.engine.connect() as conn:
        return str(conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == purpose)).scalar_one())


def test_a_rotation_ends_when_every_worker_acknowledged(pair: tuple[Components, Components]) -> None:
    serving, admin = pair
    fill(serving, 20)
    old = _active(serving)
    serving.epochs.start()
    started = time.monotonic()
    job = admin.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    final, states = _run(admin, job, DEADLINE)
    took = time.monotonic() - started
    assert final is not None and final["status"] == "done", (took, states[-1:])
    assert took < DEADLINE, took
    waiting = [s for s in states if s["phase"] == "wait_key_caches"]
    assert waiting and "acknowledge key epoch 1" in waiting[0]["waiting_for"]
    # The serving instance dropped the old key: what it seals now is under the new domain key.
    record = tokenize_one(serving, "email", "after@example.com")
    with serving.engine.connect() as conn:
        key_id = conn.execute(select(tokens.c.data_key_id).where(tokens.c.token == record.token)).scalar_one()
        domain = conn.execute(select(data_keys.c.domain_key_id).where(data_keys.c.id == key_id)).scalar_one()
        assert conn.execute(select(domain_keys.c.id).where(domain_keys.c.id == old)).first() is None
    assert domain == _active(serving) != old
    print(f"rotation of a 20-token vault with a 300 s key-cache window took {took:.1f} s")


def test_a_worker_that_stopped_reporting_keeps_the_window(pair: tuple[Components, Components]) -> None:
    serving, admin = pair
    fill(serving, 5)
    serving.epochs.beat()  # reported once, then hung or was killed (its row stays)
    job = admin.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    final, states = _run(admin, job, 6.0)
    assert final is None and states[-1]["phase"] == "wait_key_caches"


@pytest.mark.parametrize("edit", ["raise the acknowledged epoch", "age the report", "lower the epoch"])
def test_an_insider_edit_only_makes_the_job_wait(pair: tuple[Components, Components], edit: str) -> None:
    serving, admin = pair
    fill(serving, 5)
    serving.epochs.beat()  # a worker that reported, then stopped: only its row can end the wait now
    job = admin.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    with admin.engine.begin() as conn:
        if edit == "raise the acknowledged epoch":
            conn.execute(update(key_epoch_acks).values(epoch=key_epoch_acks.c.epoch + 5))
        elif edit == "age the report":
            row = conn.execute(select(key_epoch_acks)).mappings().one()
            conn.execute(update(key_epoch_acks).values(seen_at=row["seen_at"].replace(year=2000)))
        else:
            conn.execute(update(key_epoch).values(epoch=0))
    final, states = _run(admin, job, 6.0)
    assert final is None and states[-1]["phase"] == "wait_key_caches"


def test_a_worker_without_heartbeat_drops_its_keys_within_a_second(pair: tuple[Components, Components]) -> None:
    serving, admin = pair
    serving.keys.epoch_seconds = 3.0  # a loaded test machine must not confirm late on its own
    tokenize_one(serving, "email", "before@example.com")
    assert serving.keys.new_record_key_from_memory("data") is not None
    admin.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
    with admin.engine.connect() as conn:
        assert read_epoch(conn) == 1
    time.sleep(serving.keys.epoch_seconds + 0.1)
    assert serving.keys.new_record_key_from_memory("data") is None  # not confirmed lately: no use without a check
    with serving.engine.connect() as conn:
        serving.keys.active_domain_key_id(conn, "data")  # the check: epoch changed, caches dropped
    assert serving.keys.epoch == 1
    assert serving.keys.new_record_key_from_memory("data") is None
