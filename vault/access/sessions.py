"""Operators' session tokens: short-lived, bound to one operator, revocable.

A session token is a random 256-bit secret shown once at login. Only an
HMAC-SHA256 of it is stored (keyed by the `auth` domain key, like API keys), so a
database dump holds no usable session. Expiry is absolute, counted from login.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from vault.keys.hierarchy import KeyHierarchy
from vault.secret import Secret
from vault.storage.schema import operator_sessions, operators

__all__ = ["SESSION_PREFIX", "Session", "Sessions"]

SESSION_PREFIX = "tvs_"
_MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class Session:
    id: str
    token: Secret[str]
    expires_at: datetime


class Sessions:
    """Issues, finds and revokes session tokens inside the caller's transaction."""

    def __init__(self, keys: KeyHierarchy, *, lifetime: timedelta) -> None:
        self._keys = keys
        self.lifetime = lifetime

    def _hash(self, conn: Connection, token: str) -> bytes:
        key = self._keys.hmac_key(conn, "auth").expose()
        return hmac.new(key, token.encode("utf-8"), hashlib.sha256).digest()

    @staticmethod
    def looks_like_session(credentials: Secret[str] | None) -> bool:
        return credentials is not None and credentials.expose().startswith(SESSION_PREFIX)

    def issue(self, conn: Connection, operator_id: str, now: datetime) -> Session:
        token = Secret(SESSION_PREFIX + secrets.token_urlsafe(32))
        session = Session(id=f"ses_{secrets.token_hex(12)}", token=token, expires_at=now + self.lifetime)
        conn.execute(insert(operator_sessions).values(
            id=session.id, operator_id=operator_id, token_hash=self._hash(conn, token.expose()), created_at=now,
            expires_at=session.expires_at))
        # Sessions over a day past their end serve no one (the audit trail keeps the logins): drop them.
        conn.execute(delete(operator_sessions).where(operator_sessions.c.operator_id == operator_id,
                                                     operator_sessions.c.expires_at < now - timedelta(days=1)))
        return session

    def find(self, conn: Connection, token: Secret[str], now: datetime) -> Any | None:
        """The live session's row joined with its operator, or None (unknown, expired, revoked)."""
        raw = token.expose()
        if not raw.startswith(SESSION_PREFIX) or len(raw) > _MAX_TOKEN_LENGTH:
            return None
        row = conn.execute(
            select(operator_sessions.c.id, operator_sessions.c.expires_at, operator_sessions.c.revoked_at,
                   operators.c.id.label("operator_id"), operators.c.username, operators.c.role,
                   operators.c.disabled_at, operators.c.enrolment_hash)
            .join(operators, operators.c.id == operator_sessions.c.operator_id)
            .where(operator_sessions.c.token_hash == self._hash(conn, raw))
        ).first()
        if (row is None or row.revoked_at is not None or row.expires_at <= now or row.disabled_at is not None
                or row.enrolment_hash is not None):  # a reset operator's sessions are revoked; this is belt and braces
            return None
        return row

    def revoke(self, conn: Connection, session_id: str, now: datetime) -> bool:
        return bool(conn.execute(update(operator_sessions).where(
            operator_sessions.c.id == session_id, operator_sessions.c.revoked_at.is_(None)).values(revoked_at=now)
        ).rowcount == 1)

    def revoke_all(self, conn: Connection, operator_id: str, now: datetime) -> int:
        """Every live session of an operator (when the operator is disabled)."""
        return int(conn.execute(update(operator_sessions).where(
            operator_sessions.c.operator_id == operator_id, operator_sessions.c.revoked_at.is_(None),
            operator_sessions.c.expires_at > now).values(revoked_at=now)).rowcount)
