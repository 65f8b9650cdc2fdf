"""Reading token rows: the hot path's statements, built once, and opening sealed values.

Building and coercing these statements per call cost more than running them. A row comes with
its data key's columns, so opening it needs no second query.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from vault.errors import DecryptionFailed
from vault.keys.envelope import record_aad
from vault.keys.hierarchy import RECORD_PURPOSES, KeyHierarchy
from vault.storage.schema import data_keys, ignoring_conflict_for, tokens
from vault.tokens.kinds import value_from_bytes

__all__ = ["INSERT_DATA_KEYS", "MARK_USED", "live_rows_where", "new_tokens", "open_rows", "rows_by_token"]

_ROWS = (
    select(
        tokens,
        data_keys.c.domain_key_id.label("dk_domain"),
        data_keys.c.subject_id.label("dk_subject"),
        data_keys.c.purpose.label("dk_purpose"),
        data_keys.c.wrapped.label("dk_wrapped"),
    )
    .join(data_keys, data_keys.c.id == tokens.c.data_key_id)
)
_LIVE_ROWS = _ROWS.where(or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > bindparam("now")))
# Expired rows too, told apart in Python: an expired and a missing token cost the same one query.
_ROWS_BY_TOKEN = _ROWS.where(tokens.c.token.in_(bindparam("tokens", expanding=True)))
MARK_USED = (
    update(tokens)
    .where(tokens.c.token.in_(bindparam("tokens", expanding=True)),
           or_(tokens.c.last_used_at.is_(None), tokens.c.last_used_at < bindparam("day_ago")))
    .values(last_used_at=bindparam("now"))
)


# The tokenize path's writes, built once (issue #21: building them per call cost more than running them).
INSERT_DATA_KEYS = insert(data_keys)


@functools.cache
def new_tokens(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING token, for this dialect."""
    return ignoring_conflict_for(dialect, tokens).returning(tokens.c.token)


def _by_token(conn: Connection, query: Any, params: dict[str, Any]) -> dict[str, Any]:
    return {row["token"]: row for row in conn.execute(query, params).mappings()}


def rows_by_token(conn: Connection, token_list: list[str], now: datetime) -> tuple[dict[str, Any], set[str]]:
    """Live rows by token, and the tokens that exist but have expired (for a denial's reason)."""
    if not token_list:
        return {}, set()
    found = _by_token(conn, _ROWS_BY_TOKEN, {"tokens": token_list})
    expired = {token for token, row in found.items() if row["expires_at"] is not None and row["expires_at"] <= now}
    return {token: row for token, row in found.items() if token not in expired}, expired


def live_rows_where(conn: Connection, condition: Any, now: datetime) -> dict[str, Any]:
    """Live (unexpired) token rows with their data-key columns, by token."""
    return _by_token(conn, _LIVE_ROWS.where(condition), {"now": now})


def open_rows(conn: Connection, keys: KeyHierarchy, rows: Sequence[Any]) -> dict[str, Any | DecryptionFailed]:
    """Decrypt rows from `live_rows_where`: the value, or DecryptionFailed for a tampered row."""
    ciphers = keys.open_data_keys(conn, [
        {"id": r["data_key_id"], "domain_key_id": r["dk_domain"], "subject_id": r["dk_subject"],
         "purpose": r["dk_purpose"], "wrapped": r["dk_wrapped"]} for r in rows
    ], RECORD_PURPOSES) if rows else {}
    out: dict[str, Any | DecryptionFailed] = {}
    for row in rows:
        try:
            plaintext = ciphers[row["data_key_id"]].open(row["ciphertext"], record_aad(dict(row)))
            out[row["token"]] = value_from_bytes(plaintext)
        except DecryptionFailed as error:
            out[row["token"]] = error
    return out
