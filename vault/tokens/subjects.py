"""Subjects (customers) and the state that limits how their data may be used.

A subject is restricted (GDPR Art. 18: detokenization only for `legal`), a minor
(under 16: never marketing), or has opted out of a purpose (the latest consent
record for that purpose says no). Absent records mean no limitation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vault.audit.facts import live_holds, subject_facts
from vault.clear_text import contains_pan
from vault.errors import IntegrityFailure, LegalHold, ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.storage.schema import consents, holds, subjects

__all__ = ["SubjectState", "subject_states", "CONSENT_PURPOSES", "check_subject_id", "held_subjects",
           "refuse_if_held"]

_SUBJECT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_subject_id(value: str) -> str:
    """Subject ids are opaque customer ids, stored in clear: never an email, never a card number."""
    if not _SUBJECT_ID.fullmatch(value):
        raise ValidationFailed("subject_id", "must be 1 to 128 letters, digits or . _ : -")
    if contains_pan(value):
        raise ValidationFailed("subject_id", "looks like a card number")
    return value

# Purposes a customer can opt out of; `tracking` is recorded for the shop, not used here.
CONSENT_PURPOSES = ("marketing", "tracking", "profiling", "sale")


@dataclass(frozen=True)
class SubjectState:
    restricted: bool = False
    minor: bool = False
    refused: frozenset[str] = field(default_factory=frozenset)

    def refusal(self, purpose: str) -> str | None:
        """Why this subject's data may not be read for `purpose` (for the audit trail), or None."""
        if self.restricted and purpose != "legal":
            return "restricted"
        if purpose == "marketing" and self.minor:
            return "minor"
        return "opted_out" if purpose in self.refused else None

    def permits(self, purpose: str) -> bool:
        if self.restricted and purpose != "legal":
            return False
        if purpose == "marketing" and (self.minor or "marketing" in self.refused):
            return False
        return purpose not in self.refused


def subject_states(conn: Connection, subject_ids: Iterable[str], macs: RowMacs) -> dict[str, SubjectState]:
    """States of the given subjects that have any limitation; others are absent (unrestricted).

    Subject and consent rows are MAC-checked: a lifted restriction, a cleared minor flag or a
    flipped opt-out raises IntegrityFailure rather than granting.
    """
    wanted = sorted(set(subject_ids))
    if not wanted:
        return {}
    flags = {}
    for row in conn.execute(select(subjects).where(subjects.c.id.in_(wanted))).mappings():
        macs.check(conn, subjects, row)
        flags[row["id"]] = (row["restricted"], row["minor"])
    latest: dict[tuple[str, str], bool] = {}
    for row in conn.execute(select(consents).where(consents.c.subject_id.in_(wanted))
                            .order_by(consents.c.id)).mappings():
        macs.check(conn, consents, row)
        latest[(row["subject_id"], row["purpose"])] = bool(row["granted"])
    refused: dict[str, set[str]] = {}
    for (subject_id, purpose), granted in latest.items():
        if not granted:
            refused.setdefault(subject_id, set()).add(purpose)
    out = {}
    for subject_id in set(flags) | set(refused):
        restricted, minor = flags.get(subject_id, (False, False))
        out[subject_id] = SubjectState(bool(restricted), bool(minor), frozenset(refused.get(subject_id, ())))
    # A deleted subject or consent row, or an older copy restored, reads as "no limitation":
    # the trail remembers every restriction, minor marker and opt-out (vault.audit.facts).
    for subject_id, said in subject_facts(conn, macs.keys, wanted).items():
        state = out.get(subject_id, SubjectState())
        if ((said.restricted and not state.restricted) or (said.minor and not state.minor)
                or not said.refused <= state.refused):
            raise IntegrityFailure("subjects (trail)")  # or a consents row
    return out


def held_subjects(conn: Connection, now: datetime, macs: RowMacs) -> list[str]:
    """Subjects under a live legal hold at `now`, for purges: also those with any hold whose row fails its MAC
    (a release or a shortened `until` written in the database keeps the data, never frees it)."""
    held = set()
    for row in conn.execute(select(holds)).mappings():
        try:
            macs.check(conn, holds, row)
        except IntegrityFailure:
            held.add(str(row["subject_id"]))
            continue
        if row["released_at"] is None and row["until"] > now:
            held.add(str(row["subject_id"]))
    # A hold the trail placed and never released, whose row is gone, still holds (its `until` went with it).
    present = set(conn.execute(select(holds.c.id)).scalars())
    held.update(subject for hold, subject in live_holds(conn, macs.keys).items() if hold not in present)
    return sorted(held)


def refuse_if_held(conn: Connection, subject_id: str | None, now: datetime, macs: RowMacs) -> None:
    """LegalHold if `subject_id` is under an active hold; IntegrityFailure if one of its holds was edited.

    Call it *after* the statement that deletes or overwrites the subject's rows, in the
    same transaction: that statement holds their row locks, and `add_hold` locks the same
    rows before it inserts, so at READ COMMITTED either the hold commits first and this
    check sees it, or the destruction commits first and the hold is placed after it.
    """
    if subject_id is None:
        return
    present = set()
    for row in conn.execute(select(holds).where(holds.c.subject_id == subject_id)).mappings():
        macs.check(conn, holds, row)  # a hold released in the database is an integrity failure, never a release
        present.add(row["id"])
        if row["released_at"] is None and row["until"] > now:
            raise LegalHold("subject is under legal hold")
    said = subject_facts(conn, macs.keys, [subject_id]).get(subject_id)
    if said is not None and not said.holds <= present:  # a hold row deleted: the trail still holds it
        raise IntegrityFailure("holds (trail)")
