"""The integrity sweep: every MACed row, and the access decisions the audit trail remembers.

A row MAC catches an edited row when a request reads it; it cannot see a deleted row,
a row nobody reads, or an older authentic copy restored over a newer one. This sweep,
run by `tokenvault integrity check` (cron, like `tokenvault audit verify`), closes part
of that gap by cross-checking the tables against the audit trail, whose events are
chained and anchored outside the database by checkpoints:

- every row of a MACed table must carry a valid MAC (a row never read is still checked);
- a client revoked in the trail must be revoked in `clients` (a restored pre-revocation
  copy would authenticate again);
- an operator whose latest disable/enable event is a disable must be disabled;
- a dual-control request approved in the trail must not be pending again.

A finding names a table and a row id only. Deleting the trail events that would reveal a
restore breaks the chain, which `tokenvault audit verify` reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vault.errors import IntegrityFailure
from vault.keys.row_mac import MACED, RowMacs
from vault.storage.schema import approvals, audit_events, clients, operators

__all__ = ["Finding", "sweep"]

_ID = re.compile(r"(?:client|operator|request)=([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Finding:
    table: str
    row: str
    problem: str


def _subject(detail: str | None) -> str | None:
    match = _ID.search(detail or "")
    return match.group(1) if match else None


def sweep(conn: Connection, macs: RowMacs) -> list[Finding]:
    """Everything the database says that the vault did not write; empty when all is well."""
    findings: list[Finding] = []
    for name in MACED:
        table = macs.table(name)
        pk = table.primary_key.columns.values()[0]
        for stored in conn.execute(select(table)).mappings():
            try:
                macs.check(conn, table, stored)
            except IntegrityFailure:
                findings.append(Finding(name, str(stored[pk.name]), "row MAC missing or wrong"))
    events = conn.execute(
        select(audit_events.c.action, audit_events.c.detail)
        .where(audit_events.c.outcome == "allowed",
               audit_events.c.action.in_(("revoke_client", "disable_operator", "enable_operator", "approve")))
        .order_by(audit_events.c.at, audit_events.c.seq)).all()
    revoked: set[str] = set()
    operator_state: dict[str, str] = {}
    approved: set[str] = set()
    for action, detail in events:
        subject = _subject(detail)
        if subject is None:
            continue
        if action == "revoke_client":
            revoked.add(subject)
        elif action == "approve":
            approved.add(subject)
        else:
            operator_state[subject] = action
    for client_id in sorted(revoked):
        row = conn.execute(select(clients.c.revoked_at).where(clients.c.id == client_id)).first()
        if row is not None and row.revoked_at is None:
            findings.append(Finding("clients", client_id, "revoked in the audit trail, live in the table"))
    for operator_id, last in sorted(operator_state.items()):
        row = conn.execute(select(operators.c.disabled_at).where(operators.c.id == operator_id)).first()
        if last == "disable_operator" and row is not None and row.disabled_at is None:
            findings.append(Finding("operators", operator_id, "disabled in the audit trail, enabled in the table"))
    for approval_id in sorted(approved):
        row = conn.execute(select(approvals.c.status).where(approvals.c.id == approval_id)).first()
        if row is not None and row.status == "pending":
            findings.append(Finding("approvals", approval_id, "approved in the audit trail, pending in the table"))
    return findings
