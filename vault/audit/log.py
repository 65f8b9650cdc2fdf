"""Reading the audit trail: auditors' queries and verification, themselves audited.

Reading the trail is an access like any other (PCI DSS 10.2.1.3): each read and each
verification writes an event, in the same transaction, before any data is returned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.trail import Actor, AuditTrail, EventQuery, Origin, Verification, event_json, select_events
from vault.errors import StorageUnavailable, ValidationFailed

__all__ = ["AuditLog"]

MAX_PAGE = 1000


def _now() -> datetime:
    return datetime.now(UTC)


class AuditLog(AuditedOperations):
    def __init__(self, engine: Engine, trail: AuditTrail, policy: Policy,
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)

    def _authorise(self, actor: Actor, action: str, origin: Origin) -> None:
        self._require(actor, "read_audit", action, origin)

    def events(self, actor: Actor, query: EventQuery, origin: Origin) -> tuple[list[dict[str, Any]], int | None]:
        """A page of events and the cursor for the next one (None at the end)."""
        self._authorise(actor, "read_audit", origin)
        if not 1 <= query.limit <= MAX_PAGE:
            raise ValidationFailed("limit", f"must be 1 to {MAX_PAGE}")
        try:
            with self._engine.begin() as conn:
                rows = list(conn.execute(select_events(query)).mappings())
                detail = f"returned={len(rows)}"
                self._trail.record(conn, [self._event(actor, "read_audit", "allowed", origin, detail=detail,
                                                      token=query.token, subject_id=query.subject_id)])
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database unavailable") from exc
        events = [event_json(row) for row in rows]
        cursor = events[-1]["seq"] if len(events) == query.limit else None
        return events, cursor

    def verify(self, actor: Actor, origin: Origin) -> Verification:
        self._authorise(actor, "verify_audit", origin)
        try:
            with self._engine.connect() as conn:
                report = self._trail.verify(conn)
            with self._engine.begin() as conn:
                outcome = "allowed" if report.intact else "error"
                self._trail.record(conn, [self._event(actor, "verify_audit", outcome, origin,
                                                      error_code=None if report.intact else "audit_broken",
                                                      detail=f"events={report.events}")])
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database unavailable") from exc
        return report
