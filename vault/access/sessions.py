"""Operators' session tokens: short-lived, bound to one operator, revocable.

A session token is a random 256-bit secret shown once at login. Only an
HMAC-SHA256 of it is stored (keyed by the `auth` domain key, like API keys), so a
database dump holds no usable session. Expiry is absolute, counted from login.
A session row and its operator's row are MAC-checked (vault.keys.row_mac) on every
use: a session pointed at another operator, or given a later expiry, never grants.
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

from vault.audit.facts import check_operator, check_session, facts_of
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import operator_sessions, operators

__all__ = ["SESSION_PREFIX", "Session", "Sessions"]

SESSION_PREFIX = "tvs_"
_MAX_TOKEN_LENGTH = 128


@dataclass(frozen=True)
class _Found:
    """A live session and its operator, both MAC-checked."""

    id: str
    expires_at: datetime
    revoked_at: datetime | None
    operator_id: str
    username: str
    role: str
    disabled_at: datetime | None


@dataclass(frozen=True)
class Session:
    id: str
    token: Secret[str]
    expires_at: datetime


class Sessions:
    """Issues, finds and revokes session tokens inside the caller's transaction."""

    def __init__(self, keys: KeyHierarchy, *, lifetime: timedelta) -> None:
        self._keys = keys
        self._macs = RowMacs(keys)
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
        row = {"id": session.id, "operator_id": operator_id, "token_hash": self._hash(conn, token.expose()),
               "created_at": now, "expires_at": session.expires_at, "revoked_at": None}
        conn.execute(insert(operator_sessions).values(**row, row_mac=self._macs.seal(conn, operator_sessions, row)))
        # Sessions over a day past their end serve no one (the audit trail keeps the logins): drop them.
        conn.execute(delete(operator_sessions).where(operator_sessions.c.operator_id == operator_id,
                                                     operator_sessions.c.expires_at < now - timedelta(days=1)))
        return session

    def find(self, conn: Connection, token: Secret[str], now: datetime) -> Any | None:
        """The live session's row joined with its operator, or None (unknown, expired, revoked)."""
        raw = token.expose()
        if not raw.startswith(SESSION_PREFIX) or len(raw) > _MAX_TOKEN_LENGTH:
            return None
        session = conn.execute(select(operator_sessions)
                               .where(operator_sessions.c.token_hash == self._hash(conn, raw))).mappings().first()
        if session is None:
            return None
        self._macs.check(conn, operator_sessions, session)
        operator = conn.execute(select(operators).where(operators.c.id == session["operator_id"])).mappings().first()
        if operator is None:
            return None
        self._macs.check(conn, operators, operator)
        if (session["revoked_at"] is not None or session["expires_at"] <= now or operator["disabled_at"] is not None
                or operator["enrolment_hash"] is not None):  # a reset operator's sessions are revoked; belt and braces
            return None
        # A logged-out session re-inserted, or a pre-disable copy of the operator restored: the trail says no.
        facts = facts_of(conn, self._keys, [f"session:{session['id']}", f"operator:{operator['id']}"])
        check_session(facts, session)
        check_operator(facts, operator)
        return _Found(id=session["id"], expires_at=session["expires_at"], revoked_at=session["revoked_at"],
                      operator_id=operator["id"], username=operator["username"], role=operator["role"],
                      disabled_at=operator["disabled_at"])

    def revoke(self, conn: Connection, session_id: str, now: datetime) -> bool:
        return self._macs.update(conn, operator_sessions, session_id, {"revoked_at": now},
                                 operator_sessions.c.revoked_at.is_(None))

    def revoke_all(self, conn: Connection, operator_id: str, now: datetime) -> int:
        """Every live session of an operator (when the operator is disabled).

        Revoked even if a row fails its MAC (a revoked session grants nothing, so sealing
        an edited one as revoked is safe): an insider's edit cannot block a disable.
        """
        live = conn.execute(select(operator_sessions).where(
            operator_sessions.c.operator_id == operator_id, operator_sessions.c.revoked_at.is_(None),
            operator_sessions.c.expires_at > now)).mappings().all()
        for row in live:
            ended = {**dict(row), "revoked_at": now}
            conn.execute(update(operator_sessions).where(operator_sessions.c.id == row["id"]).values(
                revoked_at=now, row_mac=self._macs.seal(conn, operator_sessions, ended)))
        return len(live)
