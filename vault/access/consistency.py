"""The integrity sweep: every MACed row, and the access decisions the audit trail remembers.

A row MAC catches an edited row when a request reads it; it cannot see a deleted row,
a row nobody reads, or an older authentic copy restored over a newer one. Decisions ask
the audit trail about the last two themselves (vault.audit.facts); this sweep, run by
`tokenvault integrity check` (cron, like `tokenvault audit verify`), reports them for the
whole database, and finds edits of rows no request has read, by cross-checking the tables
against the audit trail, whose events are chained and anchored outside the database:

- every row of a MACed table must carry a valid MAC (a row never read is still checked);
- a client revoked in the trail must be revoked in `clients` (a restored pre-revocation
  copy would authenticate again);
- an operator whose latest disable/enable event is a disable must be disabled;
- a dual-control request approved in the trail must not be pending again, nor a delivered
  disclosure collectable again;
- a subject restricted or marked a minor, an opt-out, and a legal hold recorded in the trail must
  still be in the tables (deleting such a row widens access where no MAC can see it).

A finding names a table and a row id only. Deleting the trail events that would reveal a
restore breaks the chain, which `tokenvault audit verify` reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vault.errors import IntegrityFailure
from vault.keys.row_mac import MACED, RowMacs
from vault.storage.schema import (
    approvals,
    audit_events,
    clients,
    consents,
    disclosures,
    holds,
    operators,
    privacy_requests,
    subjects,
)

__all__ = ["Finding", "sweep"]

_ID = re.compile(r"(?:client|operator|request)=([A-Za-z0-9_]+)")
_HOLD = re.compile(r"hold=([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Finding:
    table: str
    row: str
    problem: str


def _subject(detail: str | None) -> str | None:
    match = _ID.search(detail or "")
    return match.group(1) if match else None


def _in_trail_order(rows: Iterable[Any]) -> list[Any]:
    """Rows led by (at, seq), sorted on the parsed time in Python: SQLite keeps `at` as text (vault.audit.facts)."""
    return sorted(rows, key=lambda row: (row[0], int(row[1])))


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
    events = [(action, detail) for _at, _seq, action, detail in _in_trail_order(conn.execute(
        select(audit_events.c.at, audit_events.c.seq, audit_events.c.action, audit_events.c.detail)
        .where(audit_events.c.outcome == "allowed",
               audit_events.c.action.in_(("revoke_client", "disable_operator", "enable_operator", "approve")))))]
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
    findings += _subject_decisions(conn)
    findings += _registered_requests(conn)
    delivered = set(conn.execute(select(audit_events.c.detail).where(
        audit_events.c.outcome == "allowed", audit_events.c.action == "disclose")).scalars())
    for disclosure_id in sorted(d for d in delivered if d):
        row = conn.execute(select(disclosures.c.status).where(disclosures.c.id == disclosure_id)).first()
        if row is not None and row.status != "delivered":
            findings.append(Finding("disclosures", disclosure_id, "delivered in the audit trail, "
                                                                  "collectable again in the table"))
    return findings


def _registered_requests(conn: Connection) -> list[Finding]:
    """Every privacy request the trail registered must still be in the register (none is ever deleted).

    A deleted request drops out of `requests due` with no MAC to notice: the customer's deadline
    would pass unseen. Requests whose events `audit archive` moved out are not compared.
    """
    registered = conn.execute(select(audit_events.c.detail).where(
        audit_events.c.outcome == "allowed", audit_events.c.action == "register_request")).scalars()
    wanted = sorted({str(detail).partition(":")[2] for detail in registered if detail and ":" in detail})
    present = set(conn.execute(select(privacy_requests.c.id)).scalars()) if wanted else set()
    return [Finding("privacy_requests", request_id, "registered in the audit trail, gone from the register")
            for request_id in wanted if request_id not in present]


def _subject_decisions(conn: Connection) -> list[Finding]:
    """Restrictions, minors, opt-outs and legal holds the trail records must still hold in the tables.

    These rows limit access by existing, so deleting one (or restoring an older copy) widens
    access where no MAC can see it; the trail is the witness.
    """
    events = [(action, subject_id, detail) for _at, _seq, action, subject_id, detail in _in_trail_order(conn.execute(
        select(audit_events.c.at, audit_events.c.seq, audit_events.c.action, audit_events.c.subject_id,
               audit_events.c.detail)
        .where(audit_events.c.outcome == "allowed", audit_events.c.subject_id.is_not(None),
               audit_events.c.action.in_(("restrict", "mark_minor", "consent", "hold", "release_hold")))))]
    restricted: dict[str, bool] = {}
    minors: set[str] = set()
    opted: dict[tuple[str, str], bool] = {}
    live_holds: dict[str, str] = {}
    for action, subject_id, detail in events:
        text = detail or ""
        if action == "restrict":
            restricted[subject_id] = "restricted=True" in text
        elif action == "mark_minor":
            minors.add(subject_id)
        elif action == "consent":
            for choice in text.split(","):
                purpose, _, granted = choice.partition("=")
                opted[(subject_id, purpose)] = granted == "True"
        elif (hold := _HOLD.search(text)) is not None:
            if action == "hold":
                live_holds[hold.group(1)] = subject_id
            else:
                live_holds.pop(hold.group(1), None)
    findings = []
    for subject_id in sorted({s for s, on in restricted.items() if on} | minors):
        row = conn.execute(select(subjects.c.restricted, subjects.c.minor)
                           .where(subjects.c.id == subject_id)).first()
        if restricted.get(subject_id) and (row is None or not row.restricted):
            findings.append(Finding("subjects", subject_id, "restricted in the audit trail, not in the table"))
        if subject_id in minors and (row is None or not row.minor):
            findings.append(Finding("subjects", subject_id, "a minor in the audit trail, not in the table"))
    for (subject_id, purpose), granted in sorted(opted.items()):
        if granted:
            continue
        latest = conn.execute(select(consents.c.granted).where(consents.c.subject_id == subject_id,
                                                               consents.c.purpose == purpose)
                              .order_by(consents.c.id.desc()).limit(1)).scalar()
        if latest is None or latest:
            findings.append(Finding("consents", subject_id, f"opted out of {purpose} in the audit trail, not in "
                                                            "the table"))
    for hold_id, subject_id in sorted(live_holds.items()):
        row = conn.execute(select(holds.c.released_at).where(holds.c.id == hold_id)).first()
        if row is None or row.released_at is not None:
            findings.append(Finding("holds", hold_id, f"held in the audit trail (subject {subject_id}), "
                                                      "gone or released in the table"))
    return findings
