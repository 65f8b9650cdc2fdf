"""API clients: machine callers identified by a random 256-bit API key.

Only an HMAC-SHA256 of each key is stored (keyed by the `auth` domain key), so a
database dump cannot be replayed as credentials. Lookups go by that keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from cachetools import TTLCache
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.audit import Actor, AuditEvent, AuditTrail, Origin
from vault.errors import AuditWriteFailed, NotFound, Unauthenticated, ValidationFailed
from vault.keys import KeyHierarchy
from vault.policy import Policy
from vault.secret import Secret
from vault.storage import clients

__all__ = ["ClientRegistry", "API_KEY_PREFIX"]

API_KEY_PREFIX = "tvk_"
_MAX_KEY_LENGTH = 128


def _now() -> datetime:
    return datetime.now(UTC)


class ClientRegistry:
    """Creates clients and authenticates their API keys."""

    def __init__(
        self,
        engine: Engine,
        keys: KeyHierarchy,
        policy: Policy,
        trail: AuditTrail,
        *,
        cache_seconds: float = 2.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._engine = engine
        self._keys = keys
        self._policy = policy
        self._trail = trail
        self._clock = clock
        # A short cache keeps authentication off the database on the hot path; a
        # revoked key stops working within `cache_seconds`.
        self._cache: TTLCache[bytes, Actor] | None = (
            TTLCache(maxsize=4096, ttl=cache_seconds) if cache_seconds > 0 else None
        )

    def _hash(self, conn: Connection, api_key: str) -> bytes:
        key = self._keys.hmac_key(conn, "auth").expose()
        return hmac.new(key, api_key.encode("utf-8"), hashlib.sha256).digest()

    def create(self, name: str, role: str) -> tuple[str, Secret[str]]:
        if not self._policy.has_role(role):
            raise ValidationFailed("role", "is not a role in the policy")
        if not name or len(name) > 200:
            raise ValidationFailed("name", "must be 1 to 200 characters")
        client_id = f"cli_{secrets.token_hex(8)}"
        api_key = Secret(API_KEY_PREFIX + secrets.token_urlsafe(32))
        with self._engine.begin() as conn:
            conn.execute(
                insert(clients).values(
                    id=client_id,
                    name=name,
                    role=role,
                    key_hash=self._hash(conn, api_key.expose()),
                    created_at=self._clock(),
                )
            )
        return client_id, api_key

    def list(self) -> list[dict[str, object]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(clients.c.id, clients.c.name, clients.c.role, clients.c.created_at,
                                       clients.c.revoked_at).order_by(clients.c.created_at)).mappings()
            return [dict(row) for row in rows]

    def revoke(self, client_id: str) -> None:
        with self._engine.begin() as conn:
            changed = conn.execute(
                update(clients).where(clients.c.id == client_id, clients.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            ).rowcount
        if changed != 1:
            raise NotFound("no such active client")
        if self._cache is not None:
            self._cache.clear()

    def authenticate(self, api_key: Secret[str] | None, origin: Origin) -> Actor:
        """The actor behind an API key; a failure is audited, then Unauthenticated."""
        try:
            return self._authenticate(api_key)
        except Unauthenticated as error:
            event = AuditEvent(at=self._clock(), actor="anonymous", role="none", action="authenticate",
                               outcome="denied", error_code=error.code, origin=origin)
            try:
                with self._engine.begin() as conn:
                    self._trail.record(conn, [event])
            except (SQLAlchemyError, AuditWriteFailed):
                pass
            raise

    def _authenticate(self, api_key: Secret[str] | None) -> Actor:
        raw = api_key.expose() if api_key is not None else ""
        if not raw.startswith(API_KEY_PREFIX) or len(raw) > _MAX_KEY_LENGTH:
            raise Unauthenticated("invalid credentials")
        with self._engine.connect() as conn:
            digest = self._hash(conn, raw)
            if self._cache is not None and (cached := self._cache.get(digest)) is not None:
                return cached
            row = conn.execute(
                select(clients.c.id, clients.c.role, clients.c.name, clients.c.revoked_at)
                .where(clients.c.key_hash == digest)
            ).first()
        if row is None or row.revoked_at is not None or not self._policy.has_role(row.role):
            raise Unauthenticated("invalid credentials")
        actor = Actor(id=row.id, role=row.role, name=row.name)
        if self._cache is not None:
            self._cache[digest] = actor
        return actor
