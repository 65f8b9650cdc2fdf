"""Key lifecycle: rotation, rewrap, retirement and compromise response, online and resumable.

Rotating the KEK rewraps the few domain keys inside the key service (no plaintext
leaves it). Rotating domain keys rewraps data keys locally, in batches. Re-encrypting
after a compromise gives every affected data key new material and re-seals its
records: same tokens, new ciphertext. Each long step is a job checkpointed in the
database: any process can resume it after a crash, two runners never work at once
(a lease), and every batch is its own transaction, so traffic never stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.alerts import integrity_event
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.errors import (
    Conflict,
    IntegrityFailure,
    KeyServiceUnavailable,
    NotFound,
    StorageUnavailable,
    ValidationFailed,
    VaultError,
)
from vault.keys.envelope import Cipher, record_aad
from vault.keys.epoch import KeyEpoch
from vault.keys.hierarchy import RECORD_PURPOSES, KeyHierarchy
from vault.keys.provider import KeyProvider, wrapped_version
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.engine import drop_deleted_copies, vacuum_deleted
from vault.storage.schema import audit_signing_keys, data_keys, domain_keys, key_jobs, tokens

__all__ = ["KeyLifecycle", "CryptoPeriods"]

LEASE = timedelta(seconds=60)
# Rewrapping a data key, in each driver's own placeholders (see `_move_data_keys`).
_MOVE_DATA_KEY = {"qmark": "UPDATE data_keys SET domain_key_id = ?, wrapped = ? WHERE id = ?",
                  "format": "UPDATE data_keys SET domain_key_id = %s, wrapped = %s WHERE id = %s",
                  "pyformat": "UPDATE data_keys SET domain_key_id = %s, wrapped = %s WHERE id = %s"}
SYSTEM = Actor(id="system", role="system")
WAITING = "wait_key_caches"  # the job phase while nothing is left to move but time (see `describe`)


@dataclass(frozen=True)
class CryptoPeriods:
    """NIST SP 800-57 Pt 1 allows up to 2 years for key-wrapping and data keys; we rotate yearly.

    `domain_key_max_wraps` keeps every domain key far below the 2^32 AES-GCM random-nonce
    limit (NIST SP 800-38D): each wrapped data key is one encryption under it.
    """

    kek_days: int = 365
    domain_key_days: int = 365
    warning_days: int = 30
    domain_key_max_wraps: int = 2**28


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _dead_here(owner: str) -> bool:
    """Whether a lease owner `host:pid:nonce` is a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:30] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _progress(values: dict[str, Any], moved: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The job row's new values: `done` counted up from the checked row, not a SQL expression (it is MACed)."""
    return lambda stored: {**values, "done": int(stored["done"]) + moved}


def rekey_data_key(conn: Connection, keys: KeyHierarchy, key_id: str) -> Cipher | None:
    """Give a data key new material (same id) and re-seal every record under it; returns the new cipher.

    Afterwards no copy of a record sealed under the old material opens: a restored old
    row fails closed. The key is wrapped under the active domain key of its purpose.
    The key row is locked FOR UPDATE and read again first, so every tokenize sealing under
    the old material (they hold it FOR KEY SHARE) has committed and its record is re-sealed
    here too; returns None if the key was deleted meanwhile (an erasure came first).
    """
    row = keys.lock_data_key(conn, key_id)
    if row is None:
        return None
    old = keys.open_data_keys(conn, [row], RECORD_PURPOSES)[row["id"]]
    material = Secret(secrets.token_bytes(32))
    fresh = Cipher(material)
    resealed = []
    for record in conn.execute(select(tokens).where(tokens.c.data_key_id == row["id"])).mappings().all():
        aad = record_aad(dict(record))
        resealed.append({"record_token": record["token"], "sealed": fresh.seal(old.open(record["ciphertext"], aad),
                                                                                aad)})
    if resealed:
        # One executemany: a round trip per record kept a re-encryption batch's keys locked for seconds, and
        # deletes and erasures waiting on them hit the statement timeout (the concurrency harness, on PostgreSQL).
        conn.execute(update(tokens).where(tokens.c.token == bindparam("record_token"))
                     .values(ciphertext=bindparam("sealed")), resealed)
    target = keys.active_domain_key_id(conn, row["purpose"])
    conn.execute(update(data_keys).where(data_keys.c.id == row["id"]).values(
        domain_key_id=target, wrapped=keys.wrap_data_key(conn, row, material, target)))
    return fresh


class KeyLifecycle(AuditedOperations):
    def __init__(self, *, engine: Engine, keys: KeyHierarchy, provider: KeyProvider, policy: Policy,
                 trail: AuditTrail, periods: CryptoPeriods = CryptoPeriods(), cache_seconds: float = 300.0,
                 clock: Callable[[], datetime] = _now, epochs: KeyEpoch | None = None) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._keys = keys
        # Key-job rows are MACed (vault.keys.row_mac): an edited kind, status, phase or parameter (which
        # keys to rewrap, re-key or destroy, and when) fails the job instead of steering it.
        self._macs = RowMacs(keys)
        self._provider = provider
        self._periods = periods
        self._cache_seconds = cache_seconds
        # The key epoch (vault.keys.epoch): jobs this process started wait for every serving process's
        # acknowledgement, not the whole cache window. job id -> (epoch raised, processes seen reporting).
        self._epochs = epochs
        self._raised: dict[str, tuple[int, set[str]]] = {}
        self._runner = f"{socket.gethostname()[:30]}:{os.getpid()}:{secrets.token_hex(3)}"

    # -- inventory --------------------------------------------------------------------------

    def _status(self, created: datetime, days: int, uses: int = 0) -> str:
        age = self._clock() - created
        if age > timedelta(days=days) or uses >= self._periods.domain_key_max_wraps:
            return "overdue"
        if age > timedelta(days=days - self._periods.warning_days) or uses >= self._periods.domain_key_max_wraps // 2:
            return "due"
        return "ok"

    def inventory(self, actor: Actor, origin: Origin) -> dict[str, Any]:
        """Every key level: KEK versions, domain keys with their data-key counts, crypto-period status."""
        self._require(actor, "manage_keys", "list_keys", origin)
        kek = self._provider.info()
        latest_created = kek.versions.get(kek.latest_version, self._clock())

        def work(conn: Connection) -> dict[str, Any]:
            counts: dict[str, int] = dict(conn.execute(select(data_keys.c.domain_key_id, func.count())
                                       .group_by(data_keys.c.domain_key_id)).all())
            domains = []
            for row in conn.execute(select(domain_keys).order_by(domain_keys.c.created_at)).mappings():
                uses = int(counts.get(row["id"], 0))
                domains.append({
                    "id": row["id"], "purpose": row["purpose"], "active": row["active_for"] is not None,
                    "kek_version": row["kek_version"], "created_at": _iso(row["created_at"]),
                    "retired_at": _iso(row["retired_at"]), "data_keys": uses,
                    "status": self._status(row["created_at"], self._periods.domain_key_days, uses)
                    if row["active_for"] else "retired"})
            self._trail.record(conn, [self._event(actor, "list_keys", "allowed", origin)])
            return {
                "kek": {"provider": kek.provider, "name": kek.key_name, "latest_version": kek.latest_version,
                        "min_decryption_version": kek.min_decryption_version,
                        "versions": {str(v): _iso(c) for v, c in sorted(kek.versions.items())},
                        "status": self._status(latest_created, self._periods.kek_days)},
                "domain_keys": domains,
            }

        found: dict[str, Any] = self._audited(actor, "list_keys", origin, work)
        return found

    def due(self, actor: Actor, origin: Origin) -> list[dict[str, Any]]:
        """What should be rotated now (status due or overdue)."""
        listing = self.inventory(actor, origin)
        items = [{"level": "kek", "id": listing["kek"]["name"], "status": listing["kek"]["status"]}]
        items += [{"level": "domain", "id": d["id"], "purpose": d["purpose"], "status": d["status"]}
                  for d in listing["domain_keys"] if d["active"]]
        return [item for item in items if item["status"] != "ok"]

    # -- jobs ---------------------------------------------------------------------------------

    def start_rotation(self, actor: Actor, origin: Origin, *, domain_keys_too: bool,
                       purposes: tuple[str, ...] = RECORD_PURPOSES, kind: str = "rotate") -> str:
        """Rotate the KEK (and, optionally, the record domain keys); returns the rewrap job id."""
        action = "erasure_epoch" if kind == "epoch" else "rotate_keys"
        self._require(actor, "manage_keys", action, origin)
        version = self._provider.rotate()

        def work(conn: Connection) -> str:
            old: list[str] = []
            generations: list[str] = []
            if domain_keys_too:
                for purpose in purposes:
                    current = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == purpose)
                                           ).scalar()
                    if current is not None:
                        old.append(current)
                    generations.append(self._keys.rotate_witnessed(conn, purpose))
            pending = conn.execute(select(func.count()).select_from(domain_keys)
                                   .where(domain_keys.c.kek_version < version)).scalar_one()
            moving = conn.execute(select(func.count()).select_from(data_keys)
                                  .where(data_keys.c.domain_key_id.in_(old))).scalar_one() if old else 0
            params = {"kek_version": version, "old_domain_keys": old, "rotated_at": _iso(self._clock()),
                      **self._raise(conn)}
            job_id = self._new_job(conn, actor, kind, params, int(pending) + int(moving))
            self._remember(job_id, params)
            witnessed = f" generations={','.join(generations)}" if generations else ""
            self._trail.record(conn, [self._event(actor, action, "allowed", origin, detail=(
                f"job={job_id} kek_version={version} domain_keys={len(old)}{witnessed}"))])
            return job_id

        job: str = self._audited(actor, action, origin, work)
        return job

    # -- erasure epochs -------------------------------------------------------------------------
    #
    # Erasure deletes a subject's data-key row, but copies of that row (dead tuples, WAL,
    # backups) stay openable for as long as the key provider can unwrap the domain key that
    # wrapped it. An epoch closes that window: a new KEK version and new record domain keys,
    # every live data key rewrapped (same material, so no record is touched), the old domain
    # keys deleted, then the KEK versions below the new one destroyed at the provider (Transit
    # trim, or removed from the local keyring). An old copy then holds only keys that no
    # longer open. It is an ordinary resumable key job (kind `epoch`); the key-wrapping format
    # does not change.

    def start_epoch(self, actor: Actor, origin: Origin) -> str:
        """Open a new erasure epoch; returns the job id (run it with `run`, resume it like any job)."""
        return self.start_rotation(actor, origin, domain_keys_too=True, kind="epoch")

    def epoch_due(self, every: timedelta) -> bool:
        """Whether the last finished epoch (or, if none, the oldest KEK version in use) is `every` old."""
        with self._engine.connect() as conn:
            epochs = self._checked(conn, select(key_jobs).where(key_jobs.c.kind == "epoch"))
        last = max((job["finished_at"] for job in epochs if job["status"] == "done"), default=None)
        if any(job["status"] == "running" for job in epochs):
            return True  # an unfinished epoch: resume it
        if last is None:
            info = self._provider.info()
            last = info.versions.get(info.min_decryption_version, self._clock())
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        return self._clock() - last >= every

    def _close_epoch(self, conn: Connection, version: int) -> None:
        """Destroy the KEK versions below `version`, once no domain key needs them (idempotent)."""
        left = conn.execute(select(func.count()).select_from(domain_keys)
                            .where(domain_keys.c.kek_version < version)).scalar_one()
        if left:
            raise Conflict(f"{left} domain keys still wrapped under a version below {version}")
        self._provider.destroy_versions_below(version)
        self._trail.record(conn, [self._event(Actor(id="system", role="system"), "erasure_epoch", "allowed",
                                              Origin(), detail=f"destroyed_kek_versions_below={version}")])

    def start_reencrypt(self, actor: Actor, domain_key_id: str, origin: Origin) -> str:
        """Compromise response: new material for every data key under `domain_key_id`, records re-sealed."""
        self._require(actor, "manage_keys", "reencrypt", origin, key_id=domain_key_id)

        job: str = self._audited(actor, "reencrypt", origin,
                                 lambda conn: self.reencrypt_in(conn, actor, domain_key_id, origin),
                                 key_id=domain_key_id)
        return job

    def check_reencrypt(self, conn: Connection, params: dict[str, Any]) -> None:
        """For dual control, at request time: the domain key exists."""
        if conn.execute(select(domain_keys.c.id).where(domain_keys.c.id == params.get("domain_key"))).first() is None:
            raise NotFound("no such domain key")

    def reencrypt_in(self, conn: Connection, actor: Actor, domain_key_id: str, origin: Origin) -> str:
        """Create the re-encryption job in the caller's transaction (also run by an approval)."""
        row = conn.execute(select(domain_keys).where(domain_keys.c.id == domain_key_id)).mappings().first()
        if row is None:
            raise NotFound("no such domain key")
        witnessed = ""
        if row["active_for"] is not None:
            witnessed = f" generations={self._keys.rotate_witnessed(conn, row['purpose'])}"
        count = conn.execute(select(func.count()).select_from(data_keys)
                             .where(data_keys.c.domain_key_id == domain_key_id)).scalar_one()
        params = {"domain_key": domain_key_id, "rotated_at": _iso(self._clock()), **self._raise(conn)}
        job_id = self._new_job(conn, actor, "reencrypt", params, int(count))
        self._remember(job_id, params)
        self._trail.record(conn, [self._event(actor, "reencrypt", "allowed", origin, key_id=domain_key_id,
                                              detail=f"job={job_id} data_keys={count}{witnessed}")])
        return job_id

    def _raise(self, conn: Connection) -> dict[str, Any]:
        """Raise the key epoch with the keys it retires; the epoch goes into the job's params."""
        if self._epochs is None:
            return {}
        return {"key_epoch": self._epochs.bump(conn)}

    def _remember(self, job_id: str, params: dict[str, Any]) -> None:
        if "key_epoch" in params:
            self._raised[job_id] = (int(params["key_epoch"]), set())

    def _new_job(self, conn: Connection, actor: Actor, kind: str, params: dict[str, Any], total: int) -> str:
        job_id = f"job_{secrets.token_hex(8)}"
        now = self._clock()
        self._macs.insert(conn, key_jobs, {
            "id": job_id, "kind": kind, "status": "running", "params": json.dumps(params), "phase": "start",
            "total": total, "done": 0, "started_at": now, "updated_at": now, "requested_by": actor.id})
        return job_id

    def _checked(self, conn: Connection, query: Any) -> list[dict[str, Any]]:
        """Key-job rows, each MAC-checked (IntegrityFailure if one was edited in the database)."""
        rows = [dict(row) for row in conn.execute(query).mappings()]
        for row in rows:
            self._macs.check(conn, key_jobs, row)
        return rows

    def job(self, actor: Actor, job_id: str, origin: Origin) -> dict[str, Any]:
        self._require(actor, "manage_keys", "key_job", origin)

        def work(conn: Connection) -> dict[str, Any]:
            rows = self._checked(conn, select(key_jobs).where(key_jobs.c.id == job_id))
            if not rows:
                raise NotFound("no such job")
            return self.describe(rows[0])

        found: dict[str, Any] = self._audited(actor, "key_job", origin, work)
        return found

    def describe(self, row: Any) -> dict[str, Any]:
        elapsed = max((row["updated_at"] - row["started_at"]).total_seconds(), 1e-6)
        rate = row["done"] / elapsed
        remaining = max(row["total"] - row["done"], 0)
        out = {"job_id": row["id"], "kind": row["kind"], "status": row["status"], "phase": row["phase"],
               "done": row["done"], "total": row["total"], "rate": round(rate, 1),
               "eta_seconds": round(remaining / rate, 1) if rate > 0 and row["status"] == "running" else None,
               "started_at": _iso(row["started_at"]), "finished_at": _iso(row["finished_at"]),
               "error": row["error"]}
        if row["phase"] == WAITING and row["status"] == "running":
            # Every record is done; what is left is time: another process may still hold the old domain
            # key in its cache and write under it, so the old key is destroyed only once all caches have
            # let it go (TOKENVAULT_KEY_CACHE_SECONDS after the rotation).
            params = json.loads(row["params"])
            until = self._caches_expire_at(params)
            if row["id"] in self._raised:
                out["waiting_for"] = (f"every serving process to acknowledge key epoch {params['key_epoch']} "
                                      f"(they drop their cached keys within {self._keys.epoch_seconds:g}s), at the "
                                      f"latest until {_iso(until)} (TOKENVAULT_KEY_CACHE_SECONDS="
                                      f"{self._cache_seconds:g}) for a process that stopped reporting")
            else:
                out["waiting_for"] = (f"other workers' key caches to let the old key go "
                                      f"(TOKENVAULT_KEY_CACHE_SECONDS={self._cache_seconds:g}) until {_iso(until)}")
            out["eta_seconds"] = round(max((until - self._clock()).total_seconds(), 0.0), 1)
        return out

    def job_kind(self, job_id: str) -> str | None:
        with self._engine.connect() as conn:
            rows = self._checked(conn, select(key_jobs).where(key_jobs.c.id == job_id))
        return str(rows[0]["kind"]) if rows else None

    def unfinished(self) -> list[str]:
        with self._engine.connect() as conn:
            return [r[0] for r in conn.execute(select(key_jobs.c.id).where(key_jobs.c.status == "running"))]

    def _lease(self, conn: Connection, job_id: str) -> bool:
        """Take or renew the job's lease: free, expired, ours, or held by a dead process on this host."""
        now = self._clock()
        holder = conn.execute(select(key_jobs.c.lease_owner).where(key_jobs.c.id == job_id)).scalar()
        free = or_(key_jobs.c.lease_until.is_(None), key_jobs.c.lease_until < now,
                   key_jobs.c.lease_owner == self._runner)
        if holder and _dead_here(holder):
            free = or_(free, key_jobs.c.lease_owner == holder)
        return self._macs.update(conn, key_jobs, job_id, {"lease_owner": self._runner, "lease_until": now + LEASE},
                                 key_jobs.c.status == "running", free)

    def run(self, job_id: str, *, batch: int = 500,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Work a job to completion (or until another runner holds it); safe to call again after a crash.

        A job row that fails its MAC stops the job (IntegrityFailure, audited and alerted): nothing
        is rewrapped, re-keyed or destroyed on the word of an edited row.
        """
        try:
            return self._run(job_id, batch, on_progress)
        except IntegrityFailure as error:
            self._audit_failure([self._event(SYSTEM, "key_job", "denied", Origin(), error_code=error.code,
                                             detail=f"job={job_id}"),
                                 integrity_event(self._clock(), SYSTEM, Origin(), error)])
            raise

    def _run(self, job_id: str, batch: int,
             on_progress: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        with self._engine.begin() as conn:
            rows = self._checked(conn, select(key_jobs).where(key_jobs.c.id == job_id))
            if not rows:
                raise NotFound("no such job")
            row = rows[0]
            if row["status"] != "running":
                return self.describe(row)
            if not self._lease(conn, job_id):
                raise Conflict("another runner holds this job")
        params = json.loads(row["params"])
        try:
            while True:
                with self._engine.begin() as conn:
                    if not self._lease(conn, job_id):
                        raise Conflict("lost the lease on this job")
                    moved, phase = self._step(conn, job_id, row["kind"], params, batch)
                    values: dict[str, Any] = {"phase": phase, "updated_at": self._clock()}
                    if phase == "done":
                        values.update(status="done", finished_at=self._clock(), lease_until=None)
                    if not self._macs.update(conn, key_jobs, job_id, _progress(values, moved)):
                        raise Conflict("the job changed meanwhile")
                    current = self._checked(conn, select(key_jobs).where(key_jobs.c.id == job_id))[0]
                if on_progress is not None:
                    on_progress(self.describe(current))
                if phase == "done":
                    drop_deleted_copies(self._engine)  # re-keyed and destroyed keys' old pages
                    if row["kind"] == "epoch":
                        vacuum_deleted(self._engine)  # dead tuples need not wait for autovacuum
                    return self.describe(current)
                if moved == 0:
                    time.sleep(0.2)  # waiting for other processes' key caches to expire
        except (KeyServiceUnavailable, StorageUnavailable) as error:
            # Transient: the job stays running, its lease released, for `keys resume` to finish.
            with contextlib.suppress(SQLAlchemyError, IntegrityFailure), self._engine.begin() as conn:
                self._macs.update(conn, key_jobs, job_id, {
                    "error": error.code, "updated_at": self._clock(), "lease_until": None})
            raise
        except IntegrityFailure:
            raise  # the row itself is in doubt: leave it for the operator and the integrity sweep
        except VaultError as error:
            with self._engine.begin() as conn:
                self._macs.update(conn, key_jobs, job_id, {
                    "status": "failed", "error": error.code, "updated_at": self._clock(), "lease_until": None})
            raise

    def _caches_expired(self, conn: Connection, job_id: str, params: dict[str, Any]) -> bool:
        """Other processes may hold the old keys until each acknowledged the key epoch, or their caches expired.

        The acknowledgements count only for a job whose epoch this process raised (its memory, not
        the job row, says which); each process had `epoch_seconds` and a heartbeat to see it.
        """
        now = self._clock()
        if now >= self._caches_expire_at(params):
            return True
        raised = self._raised.get(job_id)
        if self._epochs is None or raised is None:
            return False
        epoch, seen = raised
        rotated = self._caches_expire_at(params) - timedelta(seconds=self._cache_seconds)
        settle = timedelta(seconds=self._keys.epoch_seconds + self._epochs.heartbeat_seconds)
        # Anyone that reported within a cache window (and a heartbeat) before the rotation may hold old keys.
        since = rotated - timedelta(seconds=self._cache_seconds + self._epochs.heartbeat_seconds)
        acknowledged = self._epochs.acknowledged(conn, epoch, since=since, seen=seen)
        return acknowledged and now >= rotated + settle

    def _caches_expire_at(self, params: dict[str, Any]) -> datetime:
        rotated = datetime.fromisoformat(str(params["rotated_at"]).replace("Z", "+00:00"))
        return rotated + timedelta(seconds=self._cache_seconds)

    def _step(self, conn: Connection, job_id: str, kind: str, params: dict[str, Any],
              batch: int) -> tuple[int, str]:
        """One batch in the caller's transaction; returns (items moved, phase)."""
        if kind in ("rotate", "epoch"):
            moved = self._rewrap_domain_keys(conn, int(params["kek_version"]), batch)
            if moved:
                return moved, "rewrap_domain_keys"
            old = list(params["old_domain_keys"])
            moved = self._move_data_keys(conn, old, batch) if old else 0
            if moved:
                return moved, "rewrap_data_keys"
            if old and not self._caches_expired(conn, job_id, params):
                return 0, WAITING
            for domain_key_id in old:
                self._destroy_if_empty(conn, domain_key_id)
            if kind == "epoch":
                self._close_epoch(conn, int(params["kek_version"]))
            return 0, "done"
        moved = self._rekey_data_keys(conn, str(params["domain_key"]), batch)
        if moved:
            return moved, "reencrypt_records"
        if not self._caches_expired(conn, job_id, params):
            return 0, WAITING
        self._destroy_if_empty(conn, str(params["domain_key"]))
        return 0, "done"

    def _rewrap_domain_keys(self, conn: Connection, version: int, batch: int) -> int:
        self._rewrap_signing_keys(conn, version)
        rows = conn.execute(select(domain_keys.c.id, domain_keys.c.wrapped)
                            .where(domain_keys.c.kek_version < version).limit(batch)).all()
        if not rows:
            return 0
        rewrapped = self._provider.rewrap([r.wrapped for r in rows])
        for row, wrapped in zip(rows, rewrapped, strict=True):
            if wrapped is None:
                raise VaultError("a domain key could not be rewrapped")
            conn.execute(update(domain_keys).where(domain_keys.c.id == row.id)
                         .values(wrapped=wrapped, kek_version=wrapped_version(wrapped)))
        return len(rows)

    def _rewrap_signing_keys(self, conn: Connection, version: int) -> None:
        """The audit checkpoint signing seed is sealed by the KEK too: rewrap it with the domain keys."""
        rows = [r for r in conn.execute(select(audit_signing_keys.c.id, audit_signing_keys.c.wrapped)).all()
                if wrapped_version(r.wrapped) < version]
        if not rows:
            return
        for row, wrapped in zip(rows, self._provider.rewrap([r.wrapped for r in rows]), strict=True):
            if wrapped is None:
                raise VaultError("the audit signing key could not be rewrapped")
            conn.execute(update(audit_signing_keys).where(audit_signing_keys.c.id == row.id).values(wrapped=wrapped))

    def _locked(self, conn: Connection, condition: Any, batch: int) -> list[dict[str, Any]]:
        c = data_keys.c  # what rewrapping needs: no timestamps to parse for every key
        query = select(c.id, c.domain_key_id, c.subject_id, c.purpose, c.wrapped).where(condition).limit(batch)
        if conn.dialect.name == "postgresql":
            # Rows locked in id order (the order every multi-key locker uses), skipping those a tokenize holds.
            query = query.order_by(data_keys.c.id).with_for_update(skip_locked=True)
        # SQLite has one writer, so no lock order to keep: without ORDER BY it reads the first `batch` rows
        # off the domain_key_id index instead of sorting every key still to move, each batch (quadratic).
        found = conn.execute(query)
        names = list(found.keys())
        return [dict(zip(names, row, strict=True)) for row in found]

    def _move_data_keys(self, conn: Connection, old: list[str], batch: int) -> int:
        """Rewrap data keys from retired domain keys under the active one of their purpose."""
        rows = self._locked(conn, data_keys.c.domain_key_id.in_(old), batch)
        moved = [(target, rewrapped, row["id"])
                 for row, (target, rewrapped) in zip(rows, self._keys.rewrap_under_active(conn, rows), strict=True)]
        if moved:
            # One executemany (a round trip per key made epochs five times slower on PostgreSQL), handed to the
            # driver as plain tuples: SQLAlchemy's per-row parameter processing cost a third of an epoch on SQLite.
            conn.exec_driver_sql(_MOVE_DATA_KEY[conn.dialect.paramstyle], moved)
        return len(rows)

    def _rekey_data_keys(self, conn: Connection, compromised: str, batch: int) -> int:
        """New material for each data key; its records re-sealed (same tokens, new ciphertext)."""
        rows = self._locked(conn, data_keys.c.domain_key_id == compromised, batch)
        for row in rows:
            rekey_data_key(conn, self._keys, row["id"])
        return len(rows)

    def _destroy_if_empty(self, conn: Connection, domain_key_id: str) -> None:
        left = conn.execute(select(func.count()).select_from(data_keys)
                            .where(data_keys.c.domain_key_id == domain_key_id)).scalar_one()
        if left == 0:
            conn.execute(delete(domain_keys).where(domain_keys.c.id == domain_key_id,
                                                   domain_keys.c.active_for.is_(None)))
            self._keys.forget([domain_key_id])

    # -- retirement -----------------------------------------------------------------------------

    def retire(self, actor: Actor, below: int, origin: Origin) -> dict[str, Any]:
        """Raise the KEK's minimum decryption version, only once nothing references an older one."""
        self._require(actor, "manage_keys", "retire_keys", origin)
        found: dict[str, Any] = self._audited(actor, "retire_keys", origin,
                                              lambda conn: self.retire_in(conn, actor, below, origin))
        return found

    def check_retire(self, conn: Connection, params: dict[str, Any]) -> None:
        """For dual control, at request time: the version is sensible and nothing still needs older ones."""
        below = params.get("below")
        info = self._provider.info()
        if not isinstance(below, int) or not 1 < below <= info.latest_version:
            raise ValidationFailed("below", f"must be 2 to {info.latest_version}")
        remaining = conn.execute(select(func.count()).select_from(domain_keys)
                                 .where(domain_keys.c.kek_version < below)).scalar_one()
        remaining += sum(1 for (wrapped,) in conn.execute(select(audit_signing_keys.c.wrapped))
                         if wrapped_version(wrapped) < below)
        if remaining:
            raise Conflict(f"{remaining} domain keys still wrapped under a version below {below}")

    def retire_in(self, conn: Connection, actor: Actor, below: int, origin: Origin) -> dict[str, Any]:
        """Retire in the caller's transaction (also run by an approval): check again, then act."""
        self.check_retire(conn, {"below": below})
        self._provider.set_min_decryption_version(below)
        self._trail.record(conn, [self._event(actor, "retire_keys", "allowed", origin,
                                              detail=f"min_decryption_version={below}")])
        return {"min_decryption_version": below}

    def references_below(self, version: int) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(domain_keys)
                                    .where(domain_keys.c.kek_version < version)).scalar_one())


