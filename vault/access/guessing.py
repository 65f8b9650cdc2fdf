"""Guessing card tokens is detected and made pointless: too many misses suspend the client.

A card token keeps the PAN's length and last four (and by policy its BIN), so its random
digits are few: 8 for a 12-digit token. A client that may read cards could try candidates
until one answers. Opaque tokens (192 random bits) cannot be guessed, so only misses on
card-shaped tokens count, and only from a role a hit would have shown a card to (a role that
may not read cards learns nothing from a guess: existing or not, it answers `not_found`).
After a detokenize, metadata or delete call with such misses, this guard counts the client's
recent card misses (by any of those calls) in the audit trail (the same transaction for
detokenize, so every instance sees every miss) and suspends the client when either

- more than `per_minute` misses fell in the last minute, or more than `per_day` in the
  last 24 hours (the daily count bounds a patient guesser: see threat_model/README.md for
  the arithmetic), or
- more than `share` of its card reads in the last `window` missed, once it made at least
  `min_items` of them (a client that mostly misses is not serving customers).

A suspended client is refused on every request (403 `client_suspended`) until a second
admin approves `resume_client`; the suspension is an audit event (action `suspend_client`,
outcome `denied`, error code `guessing_suspected`) that a SIEM alerts on. Operators are
people with sessions and lockouts of their own: the guard applies to API clients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Connection

from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin
from vault.errors import Conflict, NotFound
from vault.keys.row_mac import RowMacs
from vault.storage.schema import audit_events, clients

__all__ = ["GuessingLimits", "GuessingGuard", "MISS_DETAIL"]

MISS_DETAIL = "reason=missing"  # what a denial of a token that does not exist records
# Every call that answers differently for an existing token: metadata and delete probe as well as detokenize
# (a support key finding live tokens by metadata could hand them to a gateway key that then never misses).
_PROBES = ("detokenize", "read_metadata", "delete")


@dataclass(frozen=True)
class GuessingLimits:
    per_minute: int = 20
    per_day: int = 100
    share: float = 0.5
    window: timedelta = timedelta(minutes=10)
    min_items: int = 40


def _now() -> datetime:
    return datetime.now(UTC)


class GuessingGuard:
    def __init__(self, trail: AuditTrail, macs: RowMacs, limits: GuessingLimits = GuessingLimits(),
                 clock: Callable[[], datetime] = _now) -> None:
        self._trail = trail
        self._macs = macs  # suspended_at is MACed: clearing it in the database does not resume a client
        self._limits = limits
        self._clock = clock

    @property
    def limits(self) -> GuessingLimits:
        return self._limits

    @staticmethod
    def _last_suspension(conn: Connection, actor: Actor) -> datetime | None:
        """When this client was last suspended: a resumed client's misses count from then on."""
        found: datetime | None = conn.execute(select(func.max(audit_events.c.at)).where(
            audit_events.c.actor == actor.id, audit_events.c.action == "suspend_client")).scalar()
        return found

    def _misses(self, conn: Connection, actor: Actor, since: datetime) -> int:
        found = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.actor == actor.id, audit_events.c.at > since, audit_events.c.action.in_(_PROBES),
            audit_events.c.kind == "card", audit_events.c.detail == MISS_DETAIL)).scalar()
        return int(found or 0)

    def _reads(self, conn: Connection, actor: Actor, since: datetime) -> int:
        found = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.actor == actor.id, audit_events.c.at > since, audit_events.c.action.in_(_PROBES),
            audit_events.c.kind == "card")).scalar()
        return int(found or 0)

    def verdict(self, conn: Connection, actor: Actor, now: datetime) -> str | None:
        """Why this client looks like it is guessing (counted from the trail), or None."""
        limits = self._limits
        last = self._last_suspension(conn, actor)

        def since(moment: datetime) -> datetime:
            return max(moment, last) if last is not None else moment

        if (minute := self._misses(conn, actor, since(now - timedelta(minutes=1)))) > limits.per_minute:
            return f"misses_per_minute={minute}"
        if (day := self._misses(conn, actor, since(now - timedelta(days=1)))) > limits.per_day:
            return f"misses_per_day={day}"
        recent = self._reads(conn, actor, since(now - limits.window))
        if recent >= limits.min_items:
            missed = self._misses(conn, actor, since(now - limits.window))
            if missed > limits.share * recent:
                return f"miss_share={missed}/{recent}"
        return None

    def after_misses(self, conn: Connection, actor: Actor, now: datetime, origin: Origin) -> None:
        """Call after recording a detokenize call that missed card tokens: suspend the client if it guesses."""
        why = self.verdict(conn, actor, now)
        if why is None:
            return
        suspended = self._macs.update(conn, clients, actor.id, {"suspended_at": now}, clients.c.suspended_at.is_(None))
        if suspended:
            self._trail.record(conn, [AuditEvent(
                at=now, actor=actor.id, role=actor.role, action="suspend_client", outcome="denied",
                error_code="guessing_suspected", origin=origin, detail=f"client={actor.id} {why}")])

    # Resuming is under dual control (approval action `resume_client`, see api/wiring.py).

    @staticmethod
    def check_resume(conn: Connection, params: dict[str, Any]) -> None:
        """When the request is filed: the client exists and is suspended."""
        found = conn.execute(select(clients.c.id).where(
            and_(clients.c.id == str(params.get("client_id")), clients.c.suspended_at.is_not(None)))).first()
        if found is None:
            raise NotFound("no such suspended client")

    def run_resume(self, conn: Connection, actor: Actor, params: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """Once a second admin approved: the client may call again (its misses so far stay in the trail)."""
        client_id = str(params["client_id"])
        changed = self._macs.update(conn, clients, client_id, {"suspended_at": None},
                                    clients.c.suspended_at.is_not(None))
        if not changed:
            raise Conflict("client is not suspended")
        self._trail.record(conn, [AuditEvent(at=self._clock(), actor=actor.id, role=actor.role,
                                             action="resume_client", outcome="allowed", origin=origin,
                                             detail=f"client={client_id}")])
        return {"client_id": client_id, "resumed": True}
