"""Forwarded headers, believed only from the reverse proxies the operator lists.

`TOKENVAULT_PROXY_HOPS` says how many proxies stand in front; `TOKENVAULT_FORWARDED_ALLOW_IPS`
(addresses or networks, comma-separated) says which peers may speak for a client. A request from
any other peer has its X-Forwarded-* and Forwarded headers dropped, so a client that reaches the
vault directly cannot choose the address that per-address rate limits and the audit trail see.
Without the list every peer is believed, as before (fine only when nothing but the proxy can
connect); README "Configuration" says which to set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from werkzeug.middleware.proxy_fix import ProxyFix

__all__ = ["TrustedProxies", "trusted_peer"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
              "HTTP_X_FORWARDED_PORT", "HTTP_X_FORWARDED_PREFIX")


def trusted_peer(peer: str, allowed: Sequence[IPv4Network | IPv6Network] | None) -> bool:
    """Whether `peer` may speak for a client (every peer when no list is configured)."""
    if allowed is None:
        return True
    try:
        address = ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in allowed)


class TrustedProxies:
    def __init__(self, app: WSGIApp, *, hops: int, allowed: Sequence[IPv4Network | IPv6Network] | None) -> None:
        self._direct = app
        self._fixed = ProxyFix(app, x_for=hops, x_proto=hops)
        self.allowed = allowed

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if trusted_peer(str(environ.get("REMOTE_ADDR") or ""), self.allowed):
            return self._fixed(environ, start_response)
        for name in _FORWARDED:
            environ.pop(name, None)
        return self._direct(environ, start_response)
