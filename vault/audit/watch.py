"""The integrity watch: each worker verifies the audit trail every few seconds, and locks on a break.

The checks of vault.audit.facts make a restored or deleted row useless unless the insider
also deletes (or edits) the audit event that witnesses the fact, which breaks the chain. This
thread notices that without an operator. Its first pass verifies the whole trail; each later
pass runs the incremental verification (events after the last anchored point it verified, plus
every anchor and the checkpoint log), and then compares the fact events (those with an
`entity`) with the ones it saw before: an incremental walk never re-reads an old event, so a
fact deleted, edited or stripped of its entity behind the resume point is found this way (an
event that `audit archive` moved out, per its MACed archive record, is not a finding). On a break
it engages the lockdown (vault.audit.lockdown), writes an `integrity` event and logs CRITICAL.

Several workers and hosts: each process runs its own watch on the shared database and locks
itself; there is no lockdown row an insider could delete, because the broken chain *is* the
state: it stays broken until the trail verifies again, and every watch keeps finding it. A break
is confirmed by a second run straight away (a transient read race must not lock a fleet);
verification only reads committed rows and the checkpoint log is read before the database
snapshot, so events of transactions still in flight never look like a gap.

Lifting: the lockdown lifts by itself once a verification passes (a full one: after a break the
resume point is dropped), e.g. after the database is restored. A host operator who accepts
a break starts the service with TOKENVAULT_INTEGRITY_WATCH=alert (README "Insider with the
database" says why an admin approval inside the same database cannot be the way out).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from vault.audit.lockdown import Lockdown
from vault.audit.log import AuditLog
from vault.audit.trail import AuditEvent, AuditTrail
from vault.audit.verification import Break
from vault.errors import VaultError
from vault.storage.schema import audit_archives, audit_events

__all__ = ["IntegrityWatch"]

_LOG = logging.getLogger("tokenvault.integrity")


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(broken: Break) -> str:
    return f"{broken.reason} writer={broken.writer} chain_seq={broken.chain_seq}"[:200]


class IntegrityWatch:
    """A daemon thread per process; `check()` is one pass (tests call it directly)."""

    def __init__(self, log: AuditLog, trail: AuditTrail, lockdown: Lockdown, *, seconds: float = 5.0,
                 lock: bool = True, clock: Callable[[], datetime] = _now) -> None:
        self._log = log
        self._trail = trail
        self._lockdown = lockdown
        self._seconds = seconds
        self._lock = lock  # False: alert only (TOKENVAULT_INTEGRITY_WATCH=alert)
        self._clock = clock
        self._resume: dict[str, tuple[int, str]] | None = None
        # Fact events seen (seq -> writer, chain_seq, entity, action, detail, MAC): verified by a walk.
        self._facts: dict[int, tuple[Any, ...]] = {}
        self._seen: dict[int, tuple[Any, ...]] = {}
        self._alerted: Break | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._seconds > 0 and (self._thread is None or not self._thread.is_alive()):
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="integrity-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._seconds):
            with contextlib.suppress(VaultError, SQLAlchemyError, OSError):
                self.check()  # the database or key service away: the next pass tries again

    def check(self) -> Break | None:
        """Verify what is new since the last pass; lock (or lift) accordingly. Returns the break, if any."""
        report = self._log.verify_now(resume=self._resume)  # None at first: the whole trail
        broken = report.broken
        if broken is None:
            broken = self._facts_changed()
        if broken is not None:
            again = self._log.verify_now(resume=self._resume)  # confirmed, not a passing read race
            if again.broken == broken or (again.broken is None and self._facts_changed() == broken):
                self._broken(broken)
                self._resume, self._facts = None, {}  # from now on full runs: only a whole trail lifts it
                return broken
            return None
        self._resume = report.resume or self._resume
        self._facts = self._seen
        self._alerted = None
        if self._lockdown.lift():
            self._event("integrity_lockdown_lifted", "allowed", None)
        return None

    def _facts_changed(self) -> Break | None:
        """A fact event seen before that is gone or different now (and not archived), else None."""
        c = audit_events.c
        with self._log.engine.connect() as conn:
            seen = {int(r[0]): (str(r[1]), int(r[2]), r[3], r[4], r[5], bytes(r[6])) for r in conn.execute(
                select(c.seq, c.writer, c.chain_seq, c.entity, c.action, c.detail, c.mac)
                .where(c.entity.is_not(None)))}
            archived = dict(conn.execute(select(audit_archives.c.writer, audit_archives.c.chain_seq)).all())
        self._seen = seen
        for seq, before in self._facts.items():
            now = seen.get(seq)
            if now == before:
                continue
            writer, chain_seq = before[0], before[1]
            if now is None and chain_seq <= int(archived.get(writer, 0)):
                continue  # archived (the archive record itself is verified every pass)
            return Break("fact event deleted or changed behind the verified point", writer, chain_seq, seq)
        return None

    def _broken(self, broken: Break) -> None:
        engaged = self._lockdown.engage(_describe(broken)) if self._lock else False
        if engaged or (not self._lock and broken != self._alerted):
            self._alerted = broken
            _LOG.critical("audit trail broken: %s", _describe(broken))
            self._event("integrity", "denied", _describe(broken))

    def _event(self, action: str, outcome: str, detail: str | None) -> None:
        """The alert in the trail (best effort: the lockdown holds whether or not it is written)."""
        event = AuditEvent(at=self._clock(), actor="system", role="system", action=action, outcome=outcome,
                           error_code="integrity_lockdown" if outcome == "denied" else None,
                           detail=f"watch: {detail}" if detail else "watch")
        engine = self._log.engine
        with contextlib.suppress(VaultError, SQLAlchemyError), engine.begin() as conn:
            self._trail.record(conn, [event])
