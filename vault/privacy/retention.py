"""Retention: data kept no longer than its rule allows, except under a legal hold.

Cards are purged a set time after last use; records kept after erasure for a legal
obligation (tax) are dropped when their date passes. Safe to run on several hosts at
once: every step is an idempotent DELETE.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.keys.row_mac import RowMacs
from vault.storage.schema import retained_records, tokens
from vault.tokens.service import TokenService
from vault.tokens.subjects import held_subjects

__all__ = ["RetentionService"]


def _now() -> datetime:
    return datetime.now(UTC)


class RetentionService(AuditedOperations):
    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, tokens_service: TokenService,
                 macs: RowMacs, clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._tokens = tokens_service
        self._macs = macs

    def purge(self, actor: Actor) -> dict[str, int]:
        """Cards unused past their rule, and retained records past their date; never a held subject."""
        now = self._clock()

        def work(conn: Connection) -> dict[str, int]:
            held = held_subjects(conn, now, self._macs)
            # Every retained record is MAC-checked, not only those due: a date moved earlier (purge now) or
            # later (keep too long) is refused here, at the next purge, and nothing is deleted.
            due = []
            for row in conn.execute(select(retained_records)).mappings():
                self._macs.check(conn, retained_records, row)
                if row["retain_until"] <= now and row["subject_id"] not in held:
                    due.append(row["token"])
            expired = 0
            for start in range(0, len(due), 500):
                expired += conn.execute(delete(retained_records).where(
                    retained_records.c.token.in_(due[start:start + 500]))).rowcount
            counts = {"expired_retained_records": expired}
            skipped = conn.execute(select(func.count()).select_from(retained_records).where(
                retained_records.c.retain_until <= now, retained_records.c.subject_id.in_(held))).scalar() or 0
            for kind in ("card", "cvv", "address", "email", "phone", "name", "text"):
                rule = self._policy.retention(kind)
                if rule is None or rule.purge_after_unused_days is None:
                    continue
                cutoff = now - timedelta(days=rule.purge_after_unused_days)
                unused = or_(tokens.c.last_used_at < cutoff, and_(tokens.c.last_used_at.is_(None),
                                                                   tokens.c.created_at < cutoff))
                held_subject = and_(tokens.c.kind != "cvv", tokens.c.subject_id.is_not(None),
                                    tokens.c.subject_id.in_(held))
                counts[f"unused_{kind}"] = len(self._tokens.delete_rows(
                    conn, and_(tokens.c.kind == kind, unused, ~held_subject)))
                skipped += conn.execute(select(func.count()).select_from(tokens).where(
                    tokens.c.kind == kind, unused, held_subject)).scalar() or 0
            counts["held_skipped"] = skipped  # due for purge, kept for a legal hold
            if any(counts.values()):
                self._trail.record(conn, [self._event(actor, "purge_retention", "allowed", Origin(),
                                                      detail=",".join(f"{k}={v}" for k, v in counts.items()))])
            return counts

        found: dict[str, int] = self._audited(actor, "purge_retention", Origin(), work)
        return found
