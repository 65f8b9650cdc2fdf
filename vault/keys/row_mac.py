"""Row MACs: rows that decide access carry an HMAC the database cannot forge.

An insider who writes every table but holds no KEK could otherwise edit a client's
role, clear a revocation, or point a session at another operator. Each row of a table
named in `MACED` carries `row_mac = "<key id>:<hex HMAC-SHA256>"` under the active
domain key of purpose `row`, over the table name, the primary key and the declared
columns. Every read that relies on such a row checks it (`check`), and every write goes
through `update` (check the stored MAC, apply, re-MAC, compare-and-set), so a legitimate
write never blesses an insider's edit. A missing or wrong MAC raises IntegrityFailure.

Extending: add the column to its table's tuple below. Columns whose value is NULL are
left out of the MACed message, so a new nullable column (NULL in existing rows) keeps
existing MACs valid; a new column with a non-NULL value in existing rows needs its
migration to re-MAC them (`backfill(conn, only_missing=False)` after checking them).

What a MAC cannot see: a deleted row, or an older authentic copy restored over a newer
one. See README "Insider with the database" for what that leaves open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection

from vault.errors import DecryptionFailed, IntegrityFailure
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import (
    approvals,
    clients,
    consents,
    disclosures,
    holds,
    key_jobs,
    operator_sessions,
    operators,
    privacy_requests,
    relay_routes,
    retained_records,
    subjects,
)

__all__ = ["MACED", "ROW_MAC", "RowMacs"]

ROW_MAC = "row_mac"

# The one declaration: table -> the columns its MAC covers (besides the primary key).
MACED: dict[str, tuple[str, ...]] = {
    "clients": ("name", "role", "key_hash", "created_at", "revoked_at", "previous_key_hash",
                "previous_key_expires_at", "suspended_at"),
    "operators": ("username", "role", "password_hash", "totp_sealed", "totp_key_id", "failed_attempts",
                  "locked_until", "created_at", "disabled_at", "enrolment_hash", "enrolment_expires_at",
                  "totp_used_steps"),
    "operator_sessions": ("operator_id", "token_hash", "created_at", "expires_at", "revoked_at"),
    "approvals": ("action", "params", "requested_by", "requested_at", "expires_at", "status", "approved_by",
                  "approved_at", "result"),
    "subjects": ("restricted", "minor", "created_at", "erased_at"),
    "consents": ("subject_id", "purpose", "granted", "at", "source"),
    "holds": ("subject_id", "reason", "until", "created_by", "created_at", "released_at"),
    "disclosures": ("subject_id", "tokens", "case_reference", "authority", "justification", "requested_by",
                    "requested_at", "approved_by", "approved_at", "status", "expires_at", "delivered_at"),
    # A request's state and dates: an edit could close an open request (no reminder) or move its due date.
    "privacy_requests": ("subject_id", "right", "received_at", "due_at", "status", "outcome", "closed_at",
                         "handled_by"),
    # What erasure kept and until when: an earlier date purges early, a later one keeps data too long.
    "retained_records": ("subject_id", "kind", "meta", "reason", "retain_until", "created_at"),
    # A key job decides which keys are rewrapped, re-keyed or destroyed and when (params, kind, status,
    # phase); the lease too, so an edit cannot let two runners work at once or hold a job forever.
    "key_jobs": ("kind", "status", "params", "phase", "total", "done", "started_at", "updated_at", "finished_at",
                 "error", "requested_by", "lease_owner", "lease_until"),
    # `sealed` is AEAD-bound to (name, version, state, key id) already; the MAC adds the clear columns and
    # lets a read check the newer versions it skips (an approved version marked proposed rolls a route back).
    "relay_routes": ("state", "data_key_id", "proposed_by", "proposed_at", "approved_by"),
}

_TABLES: dict[str, Table] = {table.name: table for table in (
    clients, operators, operator_sessions, approvals, subjects, consents, holds, disclosures, privacy_requests,
    retained_records, key_jobs, relay_routes)}


def _where(table: Table, key: Any) -> list[Any]:
    """The primary-key condition; `key` is a tuple for a table with a composite key (relay_routes)."""
    columns = table.primary_key.columns.values()
    values = key if len(columns) > 1 else (key,)
    return [column == value for column, value in zip(columns, values, strict=True)]


def _key_of(table: Table, row: Mapping[Any, Any]) -> Any:
    columns = table.primary_key.columns.values()
    if len(columns) > 1:
        return tuple(row[column.name] for column in columns)
    return row[columns[0].name]


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bytes | memoryview | bytearray):
        return bytes(value).hex()
    return value


def _message(table: Table, row: Mapping[Any, Any]) -> bytes:
    key = [_canonical(row[column.name]) for column in table.primary_key.columns]
    fields = [[name, _canonical(row[name])] for name in MACED[table.name] if row.get(name) is not None]
    return json.dumps(["row-mac/1", table.name, key, fields], separators=(",", ":"), sort_keys=False).encode()


class RowMacs:
    """Computes and checks row MACs; key material stays in the key hierarchy's caches."""

    def __init__(self, keys: KeyHierarchy) -> None:
        self._keys = keys

    @property
    def keys(self) -> KeyHierarchy:
        return self._keys

    @staticmethod
    def table(name: str) -> Table:
        return _TABLES[name]

    def seal(self, conn: Connection, table: Table, row: Mapping[str, Any]) -> str:
        """The MAC to store with `row` (a mapping holding the primary key and every declared column)."""
        key_id, key = self._keys.active_hmac_key(conn, "row")
        return f"{key_id}:{hmac.new(key.expose(), _message(table, row), hashlib.sha256).hexdigest()}"

    def insert(self, conn: Connection, table: Table, row: Mapping[str, Any]) -> Any:
        """Insert `row` with its MAC; returns the primary key (drawn by the database if autoincrement)."""
        if all(column.name in row for column in table.primary_key.columns):
            conn.execute(insert(table).values(**row, **{ROW_MAC: self.seal(conn, table, row)}))
            return _key_of(table, row)
        pk = table.primary_key.columns.values()[0]
        key = conn.execute(insert(table).values(**row).returning(pk)).scalar_one()
        mac = self.seal(conn, table, {**row, pk.name: key})
        conn.execute(update(table).where(pk == key).values(**{ROW_MAC: mac}))
        return key

    def check(self, conn: Connection, table: Table, row: Mapping[Any, Any]) -> None:
        """IntegrityFailure unless the row's stored MAC is one this vault made for exactly these values."""
        stored = row.get(ROW_MAC)
        if not isinstance(stored, str) or stored.count(":") != 1:
            raise IntegrityFailure(table.name)
        key_id, mac = stored.split(":")
        try:
            key = self._keys.hmac_key_by_id(conn, key_id, "row")
        except DecryptionFailed:  # unknown id, a key of another purpose, tampered wrapping: all the same answer
            raise IntegrityFailure(table.name) from None
        expected = hmac.new(key.expose(), _message(table, row), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            raise IntegrityFailure(table.name)

    def update(self, conn: Connection, table: Table, key: Any,
               values: Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]],
               *conditions: Any) -> bool:
        """Apply `values` to the row with primary key `key` if it matches `conditions`; False if none does.

        `key` is a tuple of the key's columns for a table with a composite key.
        The stored row is checked first (IntegrityFailure if edited behind our back), then
        re-MACed with the new values and written only if nobody changed it meanwhile.
        Values must be plain values, not SQL expressions: the MAC is computed here. A callable
        gets the checked row and returns the values (e.g. a counter plus one).
        """
        query = select(table).where(*_where(table, key), *conditions)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        found = conn.execute(query).mappings().first()
        if found is None:
            return False
        row = dict(found)
        self.check(conn, table, row)
        if callable(values):
            values = values(row)
        fresh = {**row, **values}
        mac = self.seal(conn, table, fresh)
        changed = conn.execute(update(table).where(*_where(table, key), table.c[ROW_MAC] == row[ROW_MAC])
                               .values(**values, **{ROW_MAC: mac})).rowcount
        return bool(changed == 1)

    def backfill(self, conn: Connection, *, only_missing: bool = True) -> int:
        """Upgrade: MAC rows that have none (all rows with `only_missing=False`); returns how many.

        This trusts the rows as they are at upgrade time: an edit made before the upgrade is
        sealed in. README "Insider with the database" says so.
        """
        done = 0
        for name in MACED:
            table = _TABLES[name]
            query = select(table)
            if only_missing:
                query = query.where(table.c[ROW_MAC].is_(None))
            for row in conn.execute(query).mappings().all():
                mac = self.seal(conn, table, dict(row))
                conn.execute(update(table).where(*_where(table, _key_of(table, row))).values(**{ROW_MAC: mac}))
                done += 1
        return done
