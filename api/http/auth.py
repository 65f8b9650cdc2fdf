"""Bearer-token authentication for every /v1 endpoint (deny by default)."""

from __future__ import annotations

from flask import g, request

from vault.audit.trail import Actor
from vault.errors import Unauthenticated
from vault.secret import Secret

__all__ = ["bearer_credentials", "current_actor"]


def bearer_credentials() -> Secret[str] | None:
    """The credentials of `Authorization: Bearer <key>`, or None if absent or malformed."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return Secret(credentials.strip())


def current_actor() -> Actor:
    actor = g.get("actor")
    if not isinstance(actor, Actor):
        raise Unauthenticated("missing credentials")
    return actor
