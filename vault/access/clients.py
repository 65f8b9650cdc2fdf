"""API clients: machine callers identified by a random 256-bit API key.

Only an HMAC-SHA256 of each key is stored (keyed by the `auth` domain key), so a
database dump cannot be replayed as credentials. Lookups go by that keyed hash.

An API key carries only a role the policy marks as a machine's: a key has no second
factor, so a human's role (admin, privacy officer, auditor) behind one would skip MFA.
Keys of human roles made before that rule are refused at authentication (audited, code
`api_key_role_not_allowed`); `human_role_clients` lists them for `tokenvault init` and the
service's start log.
Each row carries a row MAC (vault.keys.row_mac): an edited role, revocation or grace
period fails authentication with IntegrityFailure, audited as an `integrity` event.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cachetools import TTLCache
from sqlalchemy import insert, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from vault.access.policy import Policy
from vault.audit.alerts import integrity_event
from vault.audit.facts import check_client, key_fingerprint
from vault.audit.trail import HOST, Actor, AuditEvent, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import (
    AuditWriteFailed,
    ClientSuspended,
    HumanRoleKeyRefused,
    IntegrityFailure,
    NotFound,
    StorageUnavailable,
    Unauthenticated,
    ValidationFailed,
)
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import clients

__all__ = ["ClientRegistry", "API_KEY_PREFIX"]

API_KEY_PREFIX = "tvk_"
_MAX_KEY_LENGTH = 128
MAX_GRACE_SECONDS = 7 * 24 * 3600


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(key: Secret[bytes], api_key: str) -> bytes:
    return hmac.new(key.expose(), api_key.encode("utf-8"), hashlib.sha256).digest()


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
        self._macs = RowMacs(keys)
        self._policy = policy
        self._trail = trail
        self._clock = clock
        # A short cache keeps authentication off the database on the hot path; a
        # revoked key stops working within `cache_seconds`.
        self._cache: TTLCache[bytes, Actor] | None = (
            TTLCache(maxsize=4096, ttl=cache_seconds) if cache_seconds > 0 else None
        )

    def _hash(self, conn: Connection, api_key: str) -> bytes:
        return _digest(self._keys.hmac_key(conn, "auth"), api_key)

    def _host_event(self, conn: Connection, action: str, client_id: str, detail: str = "") -> None:
        """Credential changes made from the CLI are audit events too (PCI DSS 10.2.1.5)."""
        self._trail.record(conn, [AuditEvent(at=self._clock(), actor=HOST.id, role=HOST.role, action=action,
                                             outcome="allowed", detail=f"client={client_id} {detail}".strip())])

    def create(self, name: str, role: str) -> tuple[str, Secret[str]]:
        if not self._policy.has_role(role):
            raise ValidationFailed("role", "is not a role in the policy")
        if not self._policy.is_machine_role(role):
            raise ValidationFailed("role", "is a human role: API keys may carry only machine roles ("
                                   + ", ".join(self._policy.machine_roles)
                                   + "); create an operator instead (`tokenvault operators create`)")
        if not name or len(name) > 200:
            raise ValidationFailed("name", "must be 1 to 200 characters")
        refuse_pan("name", name)
        client_id = f"cli_{secrets.token_hex(8)}"
        api_key = Secret(API_KEY_PREFIX + secrets.token_urlsafe(32))
        with self._engine.begin() as conn:
            row = {"id": client_id, "name": name, "role": role, "key_hash": self._hash(conn, api_key.expose()),
                   "created_at": self._clock(), "revoked_at": None, "previous_key_hash": None,
                   "previous_key_expires_at": None}
            conn.execute(insert(clients).values(**row, row_mac=self._macs.seal(conn, clients, row)))
            self._host_event(conn, "create_client", client_id, f"role={role}")
        return client_id, api_key

    def list(self) -> list[dict[str, object]]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(clients.c.id, clients.c.name, clients.c.role, clients.c.created_at,
                                       clients.c.revoked_at, clients.c.previous_key_expires_at)
                                .order_by(clients.c.created_at)).mappings()
            return [dict(row) for row in rows]

    def human_role_clients(self) -> builtins.list[dict[str, object]]:
        """Active clients whose role is not a machine role: their keys are refused (see module docstring)."""
        return [row for row in self.list()
                if row["revoked_at"] is None and not self._policy.is_machine_role(str(row["role"]))]

    def revoke(self, client_id: str) -> None:
        with self._engine.begin() as conn:
            changed = self._macs.update(conn, clients, client_id, {"revoked_at": self._clock()},
                                        clients.c.revoked_at.is_(None))
            if changed:
                self._host_event(conn, "revoke_client", client_id)
        if not changed:
            raise NotFound("no such active client")
        if self._cache is not None:
            self._cache.clear()

    def rotate(self, client_id: str, grace_seconds: int) -> Secret[str]:
        """A new API key; the current one keeps working for `grace_seconds`, then only the new one does."""
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise ValidationFailed("grace", f"must be 0 to {MAX_GRACE_SECONDS} seconds")
        api_key = Secret(API_KEY_PREFIX + secrets.token_urlsafe(32))
        now = self._clock()
        with self._engine.begin() as conn:
            new_hash = self._hash(conn, api_key.expose())
            changed = self._macs.update(
                conn, clients, client_id,
                lambda row: {"previous_key_hash": row["key_hash"], "key_hash": new_hash,
                             "previous_key_expires_at": now + timedelta(seconds=grace_seconds)},
                clients.c.revoked_at.is_(None))
            if changed:  # the key's fingerprint makes the rotation a fact: a pre-rotation row put back is refused
                self._host_event(conn, "rotate_client_key", client_id,
                                 f"grace_seconds={grace_seconds} key={key_fingerprint(new_hash)}")
        if not changed:
            raise NotFound("no such active client")
        if self._cache is not None:
            self._cache.clear()
        return api_key

    def authenticate(self, api_key: Secret[str] | None, origin: Origin) -> Actor:
        """The actor behind an API key; a failure is counted for the audit trail, then Unauthenticated."""
        try:
            return self._authenticate(api_key)
        except SQLAlchemyError as exc:
            raise StorageUnavailable("database unavailable") from exc
        except ClientSuspended as error:
            self._audit_refusal(AuditEvent(at=self._clock(), actor=str(error), role="client", action="authenticate",
                                           outcome="denied", error_code=error.code, origin=origin,
                                           detail="reason=suspended"))
            raise
        except IntegrityFailure as error:
            anonymous = Actor(id="anonymous", role="none")
            events = [AuditEvent(at=self._clock(), actor="anonymous", role="none", action="authenticate",
                                 outcome="denied", error_code=error.code, origin=origin),
                      integrity_event(self._clock(), anonymous, origin, error)]
            try:
                with self._engine.begin() as conn:
                    self._trail.record(conn, events)
            except (SQLAlchemyError, AuditWriteFailed):
                pass
            raise
        except HumanRoleKeyRefused as error:  # a known client: its own event, naming it
            self._refused(error, origin, actor=error.client_id, role=error.role)
            raise
        except Unauthenticated as error:
            # Counted, then audited as one event per source and window (vault/audit/trail.py): a flood
            # of bad keys neither inflates the trail nor queues for its writes.
            self._trail.note_failed_authentication(self._engine, origin, error.code)
            raise

    def _refused(self, error: Unauthenticated, origin: Origin, actor: str = "anonymous", role: str = "none") -> None:
        """Audit a refused key (best effort: the request is refused whatever happens here)."""
        event = AuditEvent(at=self._clock(), actor=actor, role=role, action="authenticate", outcome="denied",
                           error_code=error.code, origin=origin)
        try:
            with self._engine.begin() as conn:
                self._trail.record(conn, [event])
        except (SQLAlchemyError, AuditWriteFailed):
            pass

    def _audit_refusal(self, event: AuditEvent) -> None:
        """Record a refused authentication; the caller is refused whether or not this write succeeds."""
        try:
            with self._engine.begin() as conn:
                self._trail.record(conn, [event])
        except (SQLAlchemyError, AuditWriteFailed):
            pass

    def _authenticate(self, api_key: Secret[str] | None) -> Actor:
        raw = api_key.expose() if api_key is not None else ""
        if not raw.startswith(API_KEY_PREFIX) or len(raw) > _MAX_KEY_LENGTH:
            raise Unauthenticated("invalid credentials")
        if self._cache is not None and (key := self._keys.cached_hmac_key("auth")) is not None:
            # The common case touches no connection at all: key and answer both in memory.
            cached = self._cache.get(_digest(key, raw))
            if cached is not None:
                return cached
        with self._engine.connect() as conn:
            digest = self._hash(conn, raw)
            if self._cache is not None and (cached := self._cache.get(digest)) is not None:
                return cached
            row = conn.execute(
                select(clients).where(or_(clients.c.key_hash == digest, clients.c.previous_key_hash == digest))
            ).first()
            if row is not None:
                self._macs.check(conn, clients, row._asdict())
                if row.revoked_at is None or row.suspended_at is None:
                    check_client(conn, self._keys, row._asdict())  # a restored pre-revocation or pre-suspension copy
        if row is None or row.revoked_at is not None or not self._policy.has_role(row.role):
            raise Unauthenticated("invalid credentials")
        if bytes(row.key_hash) != digest and not (row.previous_key_expires_at and
                                                  row.previous_key_expires_at > self._clock()):
            raise Unauthenticated("invalid credentials")  # a rotated key past its grace period
        if not self._policy.is_machine_role(row.role):
            raise HumanRoleKeyRefused(row.id, row.role)
        if row.suspended_at is not None:
            raise ClientSuspended(row.id)  # vault.access.guessing; a second admin resumes it
        actor = Actor(id=row.id, role=row.role, name=row.name)
        if self._cache is not None:
            self._cache[digest] = actor
        return actor
