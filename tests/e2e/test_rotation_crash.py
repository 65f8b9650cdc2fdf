"""Key rotation survives crashes (issue #6): SIGKILL `tokenvault keys rotate` mid-job, resume, repeat.

The local provider on SQLite, as `tokenvault init` sets it up (var/master.key, var/keyring.json,
var/tokenvault.db). 20,000 card tokens, half of them under subjects, are made in-process
on that same data dir; the rotation runs as the real CLI in a subprocess that is killed
at a random point (seeded) once it is working, several times over, and resumed with
`tokenvault keys resume`. At the end every token reads back its original value, the job
is done with done == total, and KEK version 1 can be retired.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from api.wiring import Components
from tests.conftest import make_components
from tests.support.cards import HERE, fill, read_all
from vault.audit.trail import Actor
from vault.keys.row_mac import RowMacs
from vault.storage.schema import domain_keys, key_jobs

BIN = Path(sys.executable).with_name("tokenvault")
ADMIN = Actor(id="admin", role="admin")
CACHE_SECONDS = "0.2"
SEED = 20261124
KILLS = 3


@dataclass
class Vault:
    data_dir: Path
    env: dict[str, str]
    parts: Components
    logs: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN), *args], env=self.env, capture_output=True, text=True, timeout=120)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A CLI run in the background; its output goes to files (a full pipe would stall it)."""
        stamp = time.monotonic_ns()
        return subprocess.Popen([str(BIN), *args], env=self.env, text=True, start_new_session=True,
                                stdout=(self.logs / f"{stamp}.out").open("w"),
                                stderr=(self.logs / f"{stamp}.err").open("w"))

    def last_stderr(self) -> str:
        return max(self.logs.glob("*.err")).read_text()

    def job(self) -> dict[str, object] | None:
        """The rotation job's row, read with a plain deferred read transaction: the service's engine
        begins every transaction IMMEDIATE, which would queue behind the runner's back-to-back batches."""
        with closing(sqlite3.connect(self.data_dir / "tokenvault.db", timeout=30)) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM key_jobs ORDER BY started_at DESC").fetchone()
        return dict(row) if row is not None else None

    def expire_lease(self, job_id: str) -> None:
        """Let the dead runner's lease run out now instead of in up to 60 s (vault/keys/rotation.py LEASE).

        `keys resume` right after a crash is refused until then: see
        test_resume_right_after_a_crash_takes_the_job_over.
        """
        with self.parts.engine.begin() as conn:  # through the row MAC, as the vault itself writes (#15)
            RowMacs(self.parts.keys).update(conn, key_jobs, job_id,
                                            {"lease_until": datetime.now(UTC) - timedelta(seconds=1)})


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    data_dir = tmp_path / "var"
    env = {k: v for k, v in os.environ.items()
           if k not in ("TOKENVAULT_MASTER_KEY", "TOKENVAULT_MASTER_KEY_FILE", "TOKENVAULT_DATABASE_URL",
                        "TOKENVAULT_KMS", "TOKENVAULT_POLICY")}
    env.update(TOKENVAULT_DATA_DIR=str(data_dir), TOKENVAULT_KEY_CACHE_SECONDS=CACHE_SECONDS,
               TOKENVAULT_LOG_LEVEL="warning")
    done = subprocess.run([str(BIN), "init"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (data_dir / "master.key").is_file()
    # The same data dir, database and master key, in this process (and the same short key cache
    # as the CLI: a process caching keys longer than the rotation waits would be misconfigured).
    parts = make_components(data_dir, f"sqlite:///{data_dir / 'tokenvault.db'}", TOKENVAULT_MASTER_KEY="",
                            TOKENVAULT_MASTER_KEY_FILE=str(data_dir / "master.key"),
                            TOKENVAULT_KEY_CACHE_SECONDS=CACHE_SECONDS)
    logs = tmp_path / "cli-logs"
    logs.mkdir()
    yield Vault(data_dir=data_dir, env=env, parts=parts, logs=logs)
    parts.engine.dispose()


def wait_until_working(vault: Vault, process: subprocess.Popen[str], timeout: float = 60) -> bool:
    """Wait until the job's done counter moves (the runner holds the lease and works); False if it exited first."""
    before = vault.job()
    done_before = int(before["done"]) if before else 0  # type: ignore[call-overload]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = vault.job()
        if job is not None and int(job["done"]) > done_before:  # type: ignore[call-overload]
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.02)
    raise AssertionError("the rotation made no progress")


def kill_at_random(vault: Vault, process: subprocess.Popen[str], rng: random.Random) -> bool:
    """SIGKILL the runner a random 0.1-0.8 s into its work; False if it finished first.

    10 keys per transaction, so that the job outlasts three kills (rewrapping got fast in #17)."""
    if not wait_until_working(vault, process):
        return False
    time.sleep(rng.uniform(0.1, 0.8))
    if process.poll() is not None:
        return False
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    return True


def test_rotation_killed_and_resumed_repeatedly_loses_nothing(vault: Vault) -> None:
    rng = random.Random(SEED)
    expected = fill(vault.parts, 20_000, subjects=1000)
    tokens = list(expected)

    process = vault.start("keys", "rotate", "--batch", "10")
    kills = 0
    while kill_at_random(vault, process, rng):
        kills += 1
        job = vault.job()
        assert job is not None and job["status"] == "running" and 0 < job["done"] < job["total"], job  # type: ignore[operator]
        # Mid-rotation, after a crash, the data is all readable: every batch was one transaction.
        read_all(vault.parts, {t: expected[t] for t in rng.sample(tokens, 1000)})
        vault.expire_lease(str(job["id"]))
        process = vault.start("keys", "resume", "--batch", "10")
        if kills == KILLS:
            break
    assert kills >= 2, f"the job finished after {kills} kills: make it longer\n{vault.last_stderr()}"
    assert process.wait(timeout=120) == 0, vault.last_stderr()
    job = vault.job()
    assert job is not None
    state = vault.parts.lifecycle.job(ADMIN, str(job["id"]), HERE)
    assert state["status"] == "done" and state["done"] == state["total"] > 10_000, state
    assert vault.parts.lifecycle.unfinished() == []

    read_all(vault.parts, expected)
    with vault.parts.engine.connect() as conn:
        assert conn.execute(select(func.min(domain_keys.c.kek_version))).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(domain_keys)
                            .where(domain_keys.c.active_for.is_(None))).scalar_one() == 0  # old ones destroyed
    retired = vault.cli("keys", "retire", "--below", "2")
    assert retired.returncode == 0, retired.stderr
    assert json.loads(retired.stdout) == {"min_decryption_version": 2}
    assert vault.parts.provider.info().min_decryption_version == 2
    time.sleep(float(CACHE_SECONDS) + 0.1)  # cached keys expire: reads unwrap under the keyring again
    read_all(vault.parts, {t: expected[t] for t in rng.sample(tokens, 2000)})


def test_resume_right_after_a_crash_takes_the_job_over(vault: Vault) -> None:
    expected = fill(vault.parts, 6000)
    process = vault.start("keys", "rotate", "--batch", "50")
    assert wait_until_working(vault, process)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    job = vault.job()
    assert job is not None and job["status"] == "running" and job["done"] < job["total"], job  # type: ignore[operator]
    resumed = vault.cli("keys", "resume", "--batch", "100")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.splitlines()[-1])["status"] == "done"
    read_all(vault.parts, expected)
