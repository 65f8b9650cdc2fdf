"""Reading the audit trail: auditors' queries and verification, themselves audited.

Reading the trail is an access like any other (PCI DSS 10.2.1.3): each read and each
verification writes an event, in the same transaction, before any data is returned.
Verification never runs inside a request: a request answers from the latest report or
starts (or joins) a background job, whose progress and report live in `audit_verify_jobs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.chain import audit_key, iso
from vault.audit.trail import Actor, AuditEvent, AuditTrail, EventQuery, Origin, event_json, select_events
from vault.audit.verification import Break, Verification
from vault.errors import (
    AuditWriteFailed,
    DecryptionFailed,
    Forbidden,
    NotFound,
    StorageUnavailable,
    ValidationFailed,
    VaultError,
)
from vault.storage.schema import audit_verify_jobs

__all__ = ["AuditLog"]

MAX_PAGE = 1000
JOB_STALE = timedelta(seconds=60)  # a running job not updated for this long died with its worker
RESULT_FRESH = timedelta(seconds=60)  # a report younger than this answers GET /v1/audit/verify at once


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog(AuditedOperations):
    def __init__(self, engine: Engine, trail: AuditTrail, policy: Policy,
                 clock: Callable[[], datetime] = _now, reader: Callable[[], Engine | None] | None = None) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._make_reader = reader
        self._reader: Engine | None = None
        self._reader_lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return self._engine

    def _authorise(self, actor: Actor, action: str, origin: Origin) -> None:
        self._require(actor, "read_audit", action, origin)

    def events(self, actor: Actor, query: EventQuery, origin: Origin) -> tuple[list[dict[str, Any]], int | None]:
        """A page of events and the cursor for the next one (None at the end)."""
        self._authorise(actor, "read_audit", origin)
        if not 1 <= query.limit <= MAX_PAGE:
            raise ValidationFailed("limit", f"must be 1 to {MAX_PAGE}")
        try:
            with self._engine.begin() as conn:
                self._gated(actor, lambda _conn: None)(conn)  # a disabled operator reads nothing more
                rows = list(conn.execute(select_events(query)).mappings())
                detail = f"returned={len(rows)}"
                self._trail.record(conn, [self._event(actor, "read_audit", "allowed", origin, detail=detail,
                                                      token=query.token, subject_id=query.subject_id)])
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database unavailable") from exc
        except Forbidden as error:
            raise self._deny(actor, "read_audit", origin, error) from None
        events = [event_json(row) for row in rows]
        cursor = events[-1]["seq"] if len(events) == query.limit else None
        return events, cursor

    # -- verification as a job -------------------------------------------------------------

    def verify_now(self, progress: Callable[[int, int], None] | None = None, *,
                   resume: dict[str, tuple[int, str]] | None = None) -> Verification:
        """Verification in the calling thread, on a snapshot that holds up no writer (CLI, jobs)."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = (self._make_reader() if self._make_reader else None) or self._engine
        with self._reader.connect() as conn:
            return self._trail.verify(conn, progress=progress, resume=resume)

    def resume_point(self) -> dict[str, tuple[int, str]] | None:
        """The latest run's per-chain resume points, if their MAC holds under an audit key; else None (full)."""
        with self._engine.connect() as conn:
            raw = conn.execute(select(audit_verify_jobs.c.resume).where(audit_verify_jobs.c.status == "done",
                                                                        audit_verify_jobs.c.resume.is_not(None))
                               .order_by(audit_verify_jobs.c.finished_at.desc()).limit(1)).scalar()
            if raw is None:
                return None
            try:
                sealed = json.loads(raw)
                key = audit_key(self._trail.keys, conn, str(sealed["key_id"]))
                expected = hmac.new(key, b"verify-resume|" + sealed["state"].encode(), hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, str(sealed["mac"])):
                    return None
                state = json.loads(sealed["state"])
                return {str(w): (int(point[0]), str(point[1])) for w, point in state.items()}
            except (ValueError, KeyError, TypeError, VaultError):
                return None  # unreadable or forged: verify everything

    def _seal_resume(self, state: dict[str, tuple[int, str]]) -> str:
        with self._engine.connect() as conn:
            key_id, key = self._trail.keys.active_hmac_key(conn, "audit")
        body = json.dumps(state, sort_keys=True, separators=(",", ":"))
        mac = hmac.new(key.expose(), b"verify-resume|" + body.encode(), hashlib.sha256).hexdigest()
        return json.dumps({"key_id": key_id, "state": body, "mac": mac})

    def start_local_job(self, requested_by: str) -> str:
        """A job row for a verification this process runs in the foreground (the CLI)."""
        now = self._clock()
        job_id = f"verify_{secrets.token_hex(8)}"
        with self._engine.begin() as conn:
            conn.execute(insert(audit_verify_jobs).values(id=job_id, status="running", done=0, total=0,
                                                          started_at=now, updated_at=now, requested_by=requested_by))
        return job_id

    def verification(self, actor: Actor, origin: Origin) -> tuple[str, dict[str, Any]]:
        """At once: ("result", the latest report if fresh), or ("job", a running or new job).

        A new job is marked `"start": True`; the caller runs it in the background (`run_job`).
        Concurrent callers share one running job instead of each walking the trail.
        """
        self._authorise(actor, "verify_audit", origin)
        now = self._clock()
        try:
            with self._engine.begin() as conn:
                running = conn.execute(select(audit_verify_jobs).where(
                    audit_verify_jobs.c.status == "running", audit_verify_jobs.c.updated_at > now - JOB_STALE,
                ).order_by(audit_verify_jobs.c.started_at.desc()).limit(1)).mappings().first()
                latest = conn.execute(select(audit_verify_jobs).where(audit_verify_jobs.c.status == "done")
                                      .order_by(audit_verify_jobs.c.finished_at.desc()).limit(1)).mappings().first()
                if running is not None:
                    kind, found = "job", describe_job(running)
                elif (latest is not None and latest["finished_at"] > now - RESULT_FRESH
                      and self._opened(conn, latest) is not None):
                    kind, found = "result", describe_job(latest, self._opened(conn, latest))
                else:
                    job_id = f"verify_{secrets.token_hex(8)}"
                    conn.execute(insert(audit_verify_jobs).values(
                        id=job_id, status="running", done=0, total=0, started_at=now, updated_at=now,
                        requested_by=actor.id))
                    kind, found = "job", {**describe_job(conn.execute(select(audit_verify_jobs).where(
                        audit_verify_jobs.c.id == job_id)).mappings().one()), "start": True}
                self._trail.record(conn, [self._event(actor, "verify_audit", "allowed", origin,
                                                      detail=f"job={found['job_id']} {kind}")])
        except AuditWriteFailed as exc:
            if isinstance(exc.__cause__, DecryptionFailed):  # the audit key itself: say so, not 503
                return "result", {"status": "done", "result": Verification(
                    broken=Break("audit key unreadable")).public()}
            raise
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database unavailable") from exc
        return kind, found

    def job(self, actor: Actor, job_id: str, origin: Origin) -> dict[str, Any]:
        self._authorise(actor, "verify_audit", origin)
        with self._engine.connect() as conn:
            row = conn.execute(select(audit_verify_jobs).where(audit_verify_jobs.c.id == job_id)).mappings().first()
            if row is None:
                raise NotFound("no such verification job")
            found = describe_job(row, self._opened(conn, row))
        if row["status"] == "done" and found["result"] is None:
            found.update(status="failed", error="report unreadable or not authentic")
        return found

    def _seal_report(self, job_id: str, finished_at: datetime, report: dict[str, Any]) -> str:
        """The report as stored: MACed under the audit key with its job and time, so an edited or
        replayed row cannot answer `intact` (GET /v1/audit/verify serves the latest report)."""
        body = json.dumps(report, sort_keys=True, separators=(",", ":"))
        with self._engine.connect() as conn:
            key_id, key = self._trail.keys.active_hmac_key(conn, "audit")
        mac = hmac.new(key.expose(), f"verify-report|{job_id}|{iso(finished_at)}|".encode() + body.encode(),
                       hashlib.sha256).hexdigest()
        return json.dumps({"key_id": key_id, "report": body, "mac": mac})

    def _opened(self, conn: Any, row: Any) -> dict[str, Any] | None:
        """A stored report if its MAC holds; None otherwise (then it is not served)."""
        if row["status"] != "done" or not row["result"] or row["finished_at"] is None:
            return None
        try:
            sealed = json.loads(row["result"])
            key = audit_key(self._trail.keys, conn, str(sealed["key_id"]))
            expected = hmac.new(key, f"verify-report|{row['id']}|{iso(row['finished_at'])}|".encode()
                                + str(sealed["report"]).encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(expected, str(sealed["mac"])):
                return None
            report: dict[str, Any] = json.loads(sealed["report"])
        except (ValueError, KeyError, TypeError, VaultError):
            return None
        return report

    def run_job(self, job_id: str, on_progress: Callable[[int, int], None] | None = None, *,
                full: bool = False) -> Verification | None:
        """Verify (incrementally from the last run, unless `full`), keeping the job's progress current;
        store the report and the next resume points with its audit event."""
        last = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            if time.monotonic() - last[0] < 0.5 and done < total:
                return
            last[0] = time.monotonic()
            if on_progress is not None:
                on_progress(done, total)
            if self._reader is self._engine:
                return  # SQLite: the verification holds the writer lock; the job row is updated at the end
            with self._engine.begin() as conn:
                conn.execute(update(audit_verify_jobs).where(audit_verify_jobs.c.id == job_id)
                             .values(done=done, total=total, updated_at=self._clock()))

        try:
            report = self.verify_now(progress, resume=None if full else self.resume_point())
        except (VaultError, SQLAlchemyError) as exc:
            code = exc.code if isinstance(exc, VaultError) else "storage_unavailable"
            with self._engine.begin() as conn:
                conn.execute(update(audit_verify_jobs).where(audit_verify_jobs.c.id == job_id).values(
                    status="failed", result=json.dumps({"error": code}), updated_at=self._clock(),
                    finished_at=self._clock()))
            return None
        event = AuditEvent(at=self._clock(), actor="system", role="system", action="verify_audit_result",
                           outcome="allowed" if report.intact else "error",
                           error_code=None if report.intact else "audit_broken",
                           detail=f"job={job_id} events={report.events}")
        finished = self._clock()
        try:
            sealed = self._seal_report(job_id, finished, report.public())
        except (VaultError, SQLAlchemyError):
            sealed = json.dumps({"report": json.dumps(report.public())})  # unsealed: never served as a report
        done = {"status": "done", "result": sealed, "done": report.events, "total": report.events,
                "updated_at": finished, "finished_at": finished}
        if report.intact and report.resume:
            with contextlib.suppress(VaultError, SQLAlchemyError):
                done["resume"] = self._seal_resume(report.resume)
        try:
            with self._engine.begin() as conn:
                conn.execute(update(audit_verify_jobs).where(audit_verify_jobs.c.id == job_id).values(**done))
                self._trail.record(conn, [event])
        except AuditWriteFailed:
            # The trail cannot take the event (its key is broken, which the report says): the report
            # is kept anyway, since hiding it would hide the break itself.
            with self._engine.begin() as conn:
                conn.execute(update(audit_verify_jobs).where(audit_verify_jobs.c.id == job_id).values(**done))
        return report


def describe_job(row: Any, report: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as the API shows it: progress with rate and ETA, then the (authenticated) report."""
    elapsed = max((row["updated_at"] - row["started_at"]).total_seconds(), 1e-6)
    rate = row["done"] / elapsed
    remaining = max(row["total"] - row["done"], 0)
    return {"job_id": row["id"], "status": row["status"], "done": row["done"], "total": row["total"],
            "rate": round(rate, 1),
            "eta_seconds": round(remaining / rate, 1) if rate > 0 and row["status"] == "running" else None,
            "started_at": iso(row["started_at"]),
            "finished_at": iso(row["finished_at"]) if row["finished_at"] else None,
            "result": report if row["status"] == "done" else (json.loads(row["result"]) if row["result"] else None)}
