"""The chain link of one audit event: which fields its MAC covers, and with which key.

Kept apart from the trail so the verifier and the archive code share exactly one
definition of what an event's MAC means.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from vault.errors import AuditKeyRefused
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import domain_keys

__all__ = ["GENESIS", "MAC_SCHEME", "event_fields", "mac_of", "audit_key", "iso"]

GENESIS = bytes(32)

# The fields a MAC covers, in a fixed order. Scheme 2 (every event since 0016a) covers
# every column but the MAC itself and the previous MAC (which is chained in front), so
# `seq` cannot be swapped between writers or moved; scheme 1 is kept to verify older events.
_FIELDS_V1 = (
    "at", "actor", "role", "action", "outcome", "error_code", "token", "kind", "subject_id", "purpose", "key_id",
    "request_id", "source", "user_agent", "detail", "writer", "chain_seq", "mac_key_id",
)
_FIELDS_V2 = (*_FIELDS_V1, "seq", "mac_scheme")
# Scheme 3 (every event since the one-way facts, vault.audit.facts) also covers `entity`, the
# client, operator, session, request, disclosure, subject or route a one-way fact is about:
# clearing it to hide a revocation from the vault's lookups breaks the chain like deleting the event.
event_fields = (*_FIELDS_V2, "entity")
MAC_SCHEME = 3


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _canonical(row: Mapping[str, Any] | Any) -> bytes:
    scheme = int(row.get("mac_scheme") or 1)
    names = event_fields if scheme >= 3 else _FIELDS_V2 if scheme == 2 else _FIELDS_V1
    values = [(iso(row[name]) if name == "at" else row.get(name)) for name in names]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def mac_of(key: bytes, prev_mac: bytes, row: Mapping[str, Any] | Any) -> bytes:
    return hmac.new(key, prev_mac + _canonical(row), hashlib.sha256).digest()


def audit_key(keys: KeyHierarchy, conn: Connection, key_id: str) -> bytes:
    """A MAC key by id, refused unless it is a domain key of purpose `audit`.

    A copy of another purpose's key (whose holder could compute MACs) must never verify an
    event or an archive: raises AuditKeyRefused, or the key hierarchy's own error.
    """
    purpose = conn.execute(select(domain_keys.c.purpose).where(domain_keys.c.id == key_id)).scalar()
    if purpose != "audit":
        raise AuditKeyRefused("MAC key is not an audit key")
    return keys.hmac_key_by_id(conn, key_id, "audit").expose()


