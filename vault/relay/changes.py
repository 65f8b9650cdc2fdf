"""Managing relay routes: propose a change (create, change, disable), approve it, list routes.

Admins (policy operation `manage_relay`) propose; a different admin approves through
vault/access/approvals.py (action `relay_route`, parameters: route name and version only, never
the configuration or its credentials). The `tokenvault` command on the host, which holds the
database and the master key anyway, creates routes approved at once, as it creates operators.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.trail import HOST, Actor, AuditTrail, Origin
from vault.errors import ValidationFailed
from vault.relay.routes import NAME, Route, RouteBook, RouteConfig, parse_config

__all__ = ["RouteChanges", "Proposal", "OPERATION", "ACTION"]

OPERATION = "manage_relay"
ACTION = "relay_route"


def _now() -> datetime:
    return datetime.now(UTC)


class Proposal:
    """A proposed version; its publishable key (inbound routes) is shown once, here."""

    def __init__(self, name: str, version: int, publishable_key: str | None, approved: bool) -> None:
        self.name, self.version, self.publishable_key, self.approved = name, version, publishable_key, approved

    def params(self) -> dict[str, Any]:
        return {"route": self.name, "version": self.version}


class RouteChanges(AuditedOperations):
    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, book: RouteBook,
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._book = book

    def propose(self, actor: Actor, document: Any, origin: Origin, *, new_publishable_key: bool = False) -> Proposal:
        """Validate and store a draft; HOST's drafts are approved at once."""
        if actor != HOST:
            self._require(actor, OPERATION, "propose_relay_route", origin)
        try:
            config = parse_config(document)
            config.check_against(self._policy)
        except ValidationFailed as error:
            raise self._deny(actor, "propose_relay_route", origin, error) from None
        return self._store(actor, config, origin, new_publishable_key=new_publishable_key)

    def disable(self, actor: Actor, name: str, origin: Origin) -> Proposal:
        """Propose the current route's configuration with `enabled = false`."""
        if actor != HOST:
            self._require(actor, OPERATION, "propose_relay_route", origin)
        if not NAME.match(name):
            raise ValidationFailed("route", "is not a route name")
        current: Route = self._audited(actor, "propose_relay_route", origin,
                                       lambda conn: self._book.current(conn, name))
        config = current.config.model_copy(update={"enabled": False})
        return self._store(actor, config, origin)

    def _store(self, actor: Actor, config: RouteConfig, origin: Origin, *,
               new_publishable_key: bool = False) -> Proposal:
        def work(conn: Connection) -> Proposal:
            version, key = self._book.propose(conn, actor.id, config, new_publishable_key=new_publishable_key)
            approved = actor == HOST
            if approved:
                self._book.approve(conn, actor.id, config.name, version)
            self._trail.record(conn, [self._event(actor, "propose_relay_route", "allowed", origin, detail=(
                f"route={config.name} v={version} direction={config.direction} enabled={config.enabled} "
                f"approved={approved}"))])
            return Proposal(config.name, version, key, approved)

        proposal: Proposal = self._audited(actor, "propose_relay_route", origin, work,
                                           detail=f"route={config.name}")
        return proposal

    # -- the approval action (runs inside the approving transaction) ---------------------------

    def check_approval(self, conn: Connection, params: dict[str, Any]) -> None:
        name, version = params.get("route"), params.get("version")
        if not isinstance(name, str) or not NAME.match(name) or not isinstance(version, int):
            raise ValidationFailed("params", "need route and version")
        self._book.check_draft(conn, name, version)

    def run_approval(self, conn: Connection, actor: Actor, params: dict[str, Any], origin: Origin) -> dict[str, Any]:
        self.check_approval(conn, params)
        route = self._book.approve(conn, actor.id, str(params["route"]), int(params["version"]))
        self._trail.record(conn, [self._event(actor, "approve_relay_route", "allowed", origin, detail=(
            f"route={route.name} v={route.version} enabled={route.config.enabled}"))])
        return {"route": route.name, "version": route.version, "enabled": route.config.enabled}

    # -- reading ------------------------------------------------------------------------------

    def list(self, actor: Actor, origin: Origin) -> list[dict[str, Any]]:
        """Current routes without their secrets."""
        if actor != HOST:
            self._require(actor, OPERATION, "list_relay_routes", origin)

        def work(conn: Connection) -> list[dict[str, Any]]:
            found = []
            for name in self._book.names(conn):
                route = self._book.current(conn, name, missing_ok=True)
                if route is not None:
                    found.append(route.public())
            self._trail.record(conn, [self._event(actor, "list_relay_routes", "allowed", origin,
                                                  detail=f"returned={len(found)}")])
            return found

        result: list[dict[str, Any]] = self._audited(actor, "list_relay_routes", origin, work)
        return result
