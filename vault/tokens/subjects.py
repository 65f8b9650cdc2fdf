"""Subjects (customers) and the state that limits how their data may be used.

A subject is restricted (GDPR Art. 18: detokenization only for `legal`), a minor
(under 16: never marketing), or has opted out of a purpose (the latest consent
record for that purpose says no). Absent records mean no limitation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vault.errors import ValidationFailed
from vault.keys.row_mac import RowMacs
from vault.storage.schema import consents, subjects
from vault.tokens.cards import luhn_valid

__all__ = ["SubjectState", "subject_states", "CONSENT_PURPOSES", "check_subject_id"]

_SUBJECT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DIGIT_RUN = re.compile(r"[0-9]{12,19}")


def check_subject_id(value: str) -> str:
    """Subject ids are opaque customer ids, stored in clear: never an email, never a card number."""
    if not _SUBJECT_ID.fullmatch(value):
        raise ValidationFailed("subject_id", "must be 1 to 128 letters, digits or . _ : -")
    for run in _DIGIT_RUN.findall(value):
        if luhn_valid(run):
            raise ValidationFailed("subject_id", "looks like a card number")
    return value

# Purposes a customer can opt out of; `tracking` is recorded for the shop, not used here.
CONSENT_PURPOSES = ("marketing", "tracking", "profiling", "sale")


@dataclass(frozen=True)
class SubjectState:
    restricted: bool = False
    minor: bool = False
    refused: frozenset[str] = field(default_factory=frozenset)

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
    return out
