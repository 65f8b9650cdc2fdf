"""Audit events: who did what to which token, when, from where, and how it ended.

Events are written with the same database connection, inside the same transaction,
as the operation they describe: if the event cannot be written the operation rolls
back (fail closed). Events hold tokens and ids, never a plaintext value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from vault.errors import AuditWriteFailed
from vault.storage import audit_events

__all__ = ["AuditEvent", "Origin", "Actor", "record"]


@dataclass(frozen=True)
class Origin:
    """Where a request came from (PCI DSS 10.2.2: origination of the event)."""

    request_id: str | None = None
    source: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class Actor:
    """The authenticated caller: a client or an operator, and its role."""

    id: str
    role: str
    name: str = ""


ANONYMOUS = Actor(id="anonymous", role="none")


@dataclass(frozen=True)
class AuditEvent:
    at: datetime
    actor: str
    role: str
    action: str
    outcome: str  # allowed | denied | error
    error_code: str | None = None
    token: str | None = None
    kind: str | None = None
    subject_id: str | None = None
    purpose: str | None = None
    key_id: str | None = None
    detail: str | None = None  # short, non-sensitive: counts, ids, reasons
    origin: Origin = field(default_factory=Origin)

    def row(self) -> dict[str, object]:
        data = asdict(self)
        origin = data.pop("origin")
        data.update(origin)
        if data["user_agent"]:
            data["user_agent"] = str(data["user_agent"])[:256]
        return data


def record(conn: Connection, events: Sequence[AuditEvent]) -> None:
    """Append events in the caller's transaction; raises AuditWriteFailed on any failure."""
    if not events:
        return
    try:
        conn.execute(insert(audit_events), [event.row() for event in events])
    except SQLAlchemyError as exc:
        raise AuditWriteFailed("audit event could not be written") from exc
