"""Legal disclosures under dual control: requested by one officer, approved by another.

Only after approval does the requester collect the values, once; each value read is an
audit event with purpose `legal`, and the register feeds the subject's export. Each row
carries a row MAC (vault.keys.row_mac): a request marked approved, re-targeted or
extended in the database is refused with IntegrityFailure.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.facts import check_disclosure
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import DecryptionFailed, Forbidden, NotFound, ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.storage.schema import disclosures, tokens
from vault.tokens.service import TokenService

__all__ = ["DisclosureService", "DISCLOSURE_DAYS"]

DISCLOSURE_DAYS = 7


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


class DisclosureService(AuditedOperations):
    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, tokens_service: TokenService,
                 macs: RowMacs, clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._tokens = tokens_service
        self._macs = macs

    def request(self, actor: Actor, *, subject_id: str | None, token_list: Sequence[str],
                           case_reference: str, authority: str, justification: str,
                           origin: Origin) -> dict[str, Any]:
        self._require(actor, "disclose", "disclosure_request", origin, subject_id=subject_id)
        for name, text, limit in (("case_reference", case_reference, 128), ("authority", authority, 200),
                                  ("justification", justification, 1000)):
            if not text.strip() or len(text) > limit:
                raise ValidationFailed(name, f"must be 1 to {limit} characters")
            refuse_pan(name, text)
        if bool(subject_id) == bool(token_list):
            raise ValidationFailed("subject_id", "give either subject_id or tokens")

        def work(conn: Connection) -> dict[str, Any]:
            now = self._clock()
            disclosure_id = f"disc_{secrets.token_hex(8)}"
            self._macs.insert(conn, disclosures, {
                "id": disclosure_id, "subject_id": subject_id, "tokens": json.dumps(list(token_list)),
                "case_reference": case_reference, "authority": authority, "justification": justification,
                "requested_by": actor.id, "requested_at": now, "approved_by": None, "approved_at": None,
                "status": "pending", "expires_at": now + timedelta(days=DISCLOSURE_DAYS), "delivered_at": None})
            self._trail.record(conn, [self._event(actor, "disclosure_request", "allowed", origin,
                                                  subject_id=subject_id, detail=disclosure_id)])
            return {"id": disclosure_id, "status": "pending", "expires_at": _iso(now + timedelta(days=DISCLOSURE_DAYS))}

        found: dict[str, Any] = self._audited(actor, "disclosure_request", origin, work, subject_id=subject_id)
        return found

    def approve(self, actor: Actor, disclosure_id: str, origin: Origin) -> dict[str, Any]:
        """A second, different officer approves; the requester may then collect the values once."""
        self._require(actor, "disclose", "disclosure_approve", origin)

        def work(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(disclosures).where(disclosures.c.id == disclosure_id)).mappings().first()
            if row is not None:
                self._macs.check(conn, disclosures, row)
                check_disclosure(conn, self._macs.keys, row)  # delivered once: a restored copy is not collectable again
            if row is None or row["status"] != "pending" or row["expires_at"] <= self._clock():
                raise NotFound("no such pending disclosure")
            if row["requested_by"] == actor.id:
                raise Forbidden("the requester may not approve their own disclosure")
            # Approved once: the checked compare-and-set decides between concurrent approvals.
            taken = self._macs.update(conn, disclosures, disclosure_id,
                                      {"status": "approved", "approved_by": actor.id, "approved_at": self._clock()},
                                      disclosures.c.status == "pending")
            if not taken:
                raise NotFound("no such pending disclosure")
            self._trail.record(conn, [self._event(actor, "disclosure_approve", "allowed", origin,
                                                  subject_id=row["subject_id"], detail=disclosure_id)])
            return {"id": disclosure_id, "status": "approved"}

        found: dict[str, Any] = self._audited(actor, "disclosure_approve", origin, work)
        return found

    def collect(self, actor: Actor, disclosure_id: str, origin: Origin) -> dict[str, Any]:
        """The values, once, to the officer who asked; recorded in the disclosures register."""
        self._require(actor, "disclose", "disclose", origin)

        def work(conn: Connection) -> dict[str, Any]:
            row = conn.execute(select(disclosures).where(disclosures.c.id == disclosure_id)).mappings().first()
            if row is not None:
                self._macs.check(conn, disclosures, row)
                check_disclosure(conn, self._macs.keys, row)  # delivered once: a restored copy is not collectable again
            if row is None or row["status"] != "approved" or row["requested_by"] != actor.id \
                    or row["expires_at"] <= self._clock():
                raise NotFound("no such approved disclosure")
            now = self._clock()
            # Delivered once: claim the disclosure before reading anything. On PostgreSQL a
            # second collect waits on this row, then finds it no longer `approved` (0 rows).
            claimed = self._macs.update(conn, disclosures, disclosure_id, {"status": "delivered", "delivered_at": now},
                                        disclosures.c.status == "approved")
            if not claimed:
                raise NotFound("no such approved disclosure")
            listed = json.loads(row["tokens"])
            condition = (tokens.c.subject_id == row["subject_id"]) if row["subject_id"] else tokens.c.token.in_(listed)
            rows = [r for r in self._tokens.rows_where(conn, condition, now).values() if r["kind"] != "cvv"]
            values = self._tokens.open_rows(conn, rows)
            events = [self._event(actor, "disclose", "allowed", origin, token=r["token"], kind=r["kind"],
                                  subject_id=r["subject_id"], purpose="legal", detail=disclosure_id) for r in rows]
            self._trail.record(conn, events or [self._event(actor, "disclose", "allowed", origin,
                                                            detail=disclosure_id)])
            return {"id": disclosure_id, "case_reference": row["case_reference"], "authority": row["authority"],
                    "values": [{"token": r["token"], "kind": r["kind"],
                                "value": None if isinstance(values[r["token"]], DecryptionFailed)
                                else values[r["token"]]} for r in rows]}

        found: dict[str, Any] = self._audited(actor, "disclose", origin, work)
        return found
