"""Alerts written to the audit trail: requests refused by a rate limit, rows that fail integrity.

A refused request is an invalid access attempt (PCI DSS 10.2.1.4): each one is an
event (action `rate_limit`, outcome `denied`) that a SIEM can alert on. The request
is refused whether or not the event could be written.

A row that fails its MAC (vault.keys.row_mac) or a deterministic index entry that
points at another value means someone changed the database behind the vault's back:
an event with action `integrity` (outcome `denied`, code `integrity_failure`), which
a SIEM pages on, and a log line at CRITICAL on the `tokenvault.integrity` logger.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin
from vault.errors import IntegrityFailure, VaultError

__all__ = ["Alerts", "integrity_event"]

_LOG = logging.getLogger("tokenvault.integrity")


def integrity_event(at: datetime, actor: Actor, origin: Origin, error: IntegrityFailure) -> AuditEvent:
    """The audit event (and log line) for one integrity failure; the caller records it."""
    _LOG.critical("integrity failure: table=%s actor=%s request=%s", error.table, actor.id, origin.request_id)
    return AuditEvent(at=at, actor=actor.id, role=actor.role, action="integrity", outcome="denied",
                      error_code=error.code, origin=origin, detail=f"table={error.table}")


def _now() -> datetime:
    return datetime.now(UTC)


class Alerts:
    def __init__(self, engine: Engine, trail: AuditTrail, *, clock: Callable[[], datetime] = _now) -> None:
        self._engine = engine
        self._trail = trail
        self._clock = clock

    def rate_limited(self, actor: Actor, limit: str, scope: str, origin: Origin) -> None:
        """Audit one refused request; `limit` is the rule (e.g. `100 per 1 second`), `scope` what it counts."""
        event = AuditEvent(at=self._clock(), actor=actor.id, role=actor.role, action="rate_limit", outcome="denied",
                           error_code="rate_limited", origin=origin, detail=f"limit={limit} scope={scope}")
        with contextlib.suppress(VaultError, SQLAlchemyError), self._engine.begin() as conn:
            self._trail.record(conn, [event])
