"""The integrity lockdown: what the vault refuses while its audit chain is broken.

Set by the integrity watch (vault.audit.watch) of this process. While engaged, every API
key and every operator but an admin or an auditor is refused (`integrity_lockdown`), and
no dual-control request is approved: data reads and grants stop, while the people who
investigate can still read and verify the trail. Refusals are counted into the trail
like failed authentications (one event per source, reason and window), not one per request.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine

from vault.audit.trail import Actor, AuditTrail, Origin
from vault.errors import IntegrityLockdown

__all__ = ["Lockdown", "INVESTIGATORS"]

# Roles served during a lockdown: they read and verify the trail; none reads card or personal data.
INVESTIGATORS = ("admin", "auditor")
_LOG = logging.getLogger("tokenvault.integrity")


class Lockdown:
    """One per process; thread-safe. `reason` is the watch's finding (never a value)."""

    def __init__(self, engine: Engine, trail: AuditTrail) -> None:
        self._engine = engine
        self._trail = trail
        self._lock = threading.Lock()
        self._reason: str | None = None

    @property
    def reason(self) -> str | None:
        with self._lock:
            return self._reason

    def engage(self, reason: str) -> bool:
        """Lock (True if it was not locked already)."""
        with self._lock:
            first, self._reason = self._reason is None, reason
        if first:
            _LOG.critical("integrity lockdown: %s", reason)
        return first

    def lift(self) -> bool:
        with self._lock:
            was, self._reason = self._reason, None
        if was is not None:
            _LOG.warning("integrity lockdown lifted: the audit trail verifies again")
        return was is not None

    def check(self, actor: Actor, origin: Origin, *, grant: bool = False) -> None:
        """Refuse `actor` while locked (every actor, for a `grant`); the refusal is counted for the trail."""
        if self.reason is None or (not grant and actor.role in INVESTIGATORS):
            return
        self._trail.note_failed_authentication(self._engine, origin, IntegrityLockdown.code,
                                               detail=f"actor={actor.id}"[:64])
        raise IntegrityLockdown("the audit trail failed its integrity check")
