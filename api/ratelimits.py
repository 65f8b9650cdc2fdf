"""Rate limits (Flask-Limiter): per client over every /v1 endpoint, stricter for detokenize, per address for login.

Limits are counted per API client or operator (its id), with the value chosen by its
role (`TOKENVAULT_RATE_LIMIT[_<ROLE>]`, `TOKENVAULT_DETOKENIZE_RATE_LIMIT[_<ROLE>]`).
Counters live in Redis when TOKENVAULT_REDIS_URL is set, so every worker and host shares
them; otherwise in process memory, where each worker counts on its own. If Redis
becomes unreachable, each worker falls back to its own in-memory counters rather than
stopping traffic. A refused request answers 429 with Retry-After and is audited
(action `rate_limit`, outcome `denied`).
"""

from __future__ import annotations

import time
from typing import ClassVar

from flask import Flask, Response, g, jsonify, request
from flask_limiter import Limiter, RateLimitExceeded
from limits.storage import MemoryStorage

from api.errors import error_body
from api.routes import components, origin
from api.wiring import Components
from vault.audit import ANONYMOUS, Actor
from vault.errors import RateLimited

__all__ = ["init_app"]

_DETOKENIZE = "v1.detokenize"
_LOGIN = "auth.login"



class SweptMemoryStorage(MemoryStorage):  # type: ignore[misc]
    """limits' in-process storage without a timer thread per burst of requests.

    The stock storage starts a 10 ms `threading.Timer` whenever its last one ended, that is
    on nearly every request under load; it only frees memory (reads check expiry lazily),
    so here expired entries are swept inline at most once a second.
    """

    STORAGE_SCHEME: ClassVar[list[str]] = ["tvmemory"]
    _last_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # overrides the name-mangled private method
        now = time.monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def _actor() -> Actor | None:
    actor = g.get("actor")
    return actor if isinstance(actor, Actor) else None


def _key() -> str:
    """Who is counted: the authenticated client or operator, else (login) the source address."""
    actor = _actor()
    return f"actor:{actor.id}" if actor is not None else f"addr:{request.remote_addr or 'unknown'}"


def init_app(app: Flask, parts: Components) -> Limiter:
    """Register after the authentication hook, so limits see the caller."""
    access = parts.access

    def everything() -> str:
        actor = _actor()
        return access.rate_limit_for(actor.role if actor else "")

    def per_endpoint() -> str:
        if request.endpoint == _DETOKENIZE:
            actor = _actor()
            return access.detokenize_rate_limit_for(actor.role if actor else "")
        return access.login_rate_limit

    limiter = Limiter(
        key_func=_key,
        storage_uri=access.redis_url or "tvmemory://",
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1} if access.redis_url else {},
        strategy="sliding-window-counter",
        key_prefix="tokenvault",
        application_limits=[everything],
        application_limits_exempt_when=lambda: _actor() is None,
        default_limits=[per_endpoint],
        default_limits_exempt_when=lambda: request.endpoint not in (_DETOKENIZE, _LOGIN),
        in_memory_fallback_enabled=bool(access.redis_url),
        headers_enabled=False,
    )
    limiter.init_app(app)

    @app.errorhandler(RateLimitExceeded)
    def _refused(error: RateLimitExceeded) -> tuple[Response, int]:
        scope = "all" if error.limit.shared else (request.endpoint or "unknown")
        components().alerts.rate_limited(_actor() or ANONYMOUS, str(error.limit.limit), scope, origin())
        current = limiter.current_limit
        wait = max(1, int((current.reset_at if current else time.time() + 1) - time.time()))
        response = jsonify({"error": error_body(RateLimited("too many requests"))})
        response.headers["Retry-After"] = str(wait)
        return response, 429

    return limiter
