"""Rate limits: per client over every /v1 endpoint, per value for detokenize, per address for login and enrolment.

Limits are counted per API client or operator (its id), with the value chosen by its
role (`TOKENVAULT_RATE_LIMIT[_<ROLE>]`, `TOKENVAULT_DETOKENIZE_RATE_LIMIT[_<ROLE>]`). The
detokenize quota counts values, not requests: a batch of 1,000 tokens spends 1,000.
Counters live in Redis when TOKENVAULT_REDIS_URL is set, so every worker and host shares
them; otherwise in process memory, where each worker counts on its own. If Redis
becomes unreachable, each worker falls back to its own in-memory counters rather than
stopping traffic, and tries Redis again after a few seconds. A refused request answers
429 with Retry-After and is audited (action `rate_limit`, outcome `denied`).

The `limits` library does the counting (sliding window counter); this module only says
who is counted against what. It calls the library directly, one `hit` per limit: the
Flask-Limiter extension it replaced spent more per request resolving its configuration
than the counting itself.
"""

from __future__ import annotations

import functools
import math
import time
from typing import ClassVar

from flask import Flask, Response, g, jsonify, request
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from api.access_settings import AccessSettings
from api.http.errors import error_body
from api.http.logs import get_logger
from api.http.tokens import components, origin
from api.wiring import Components
from vault.audit.trail import ANONYMOUS, Actor
from vault.errors import RateLimited

__all__ = ["RateLimits", "init_app", "ITEM_QUOTA"]

_DETOKENIZE_ITEMS = "v1.detokenize.items"
ITEM_QUOTA = "tokenvault.item_quota"
_LOGIN = "auth.login"
_INBOUND = "relay.inbound"  # no caller identity (a publishable key): counted per address
# Redeeming an enrolment code is as unauthenticated as logging in: one counter per address for both steps.
_ENROLMENT = ("enrolment.begin", "enrolment.confirm")
_PREFIX = "tokenvault"
_RETRY_REDIS_AFTER = 5.0


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


@functools.lru_cache(maxsize=64)
def _parsed(limits: str) -> tuple[RateLimitItem, ...]:
    return tuple(parse_many(limits))


class RateLimits:
    """Counts requests per (who, scope); Redis when configured, else (or while it is down) memory."""

    def __init__(self, redis_url: str | None) -> None:
        self._memory = SlidingWindowCounterRateLimiter(SweptMemoryStorage())
        self._shared: SlidingWindowCounterRateLimiter | None = None
        if redis_url:
            storage: Storage = storage_from_string(redis_url, wrap_exceptions=True, socket_timeout=1,
                                                   socket_connect_timeout=1)
            self._shared = SlidingWindowCounterRateLimiter(storage)
        self._shared_down_until = 0.0
        self._log = get_logger("tokenvault.ratelimits")

    def refused(self, who: str, scope: str, limits: str, cost: int = 1) -> tuple[RateLimitItem, int] | None:
        """Count `cost` (one request, or the items of one); the first limit exceeded and the seconds until it frees."""
        for item in _parsed(limits):
            limiter = self._limiter()
            try:
                allowed = limiter.hit(item, _PREFIX, who, scope, cost=cost)
            except StorageError:
                self._shared_down_until = time.monotonic() + _RETRY_REDIS_AFTER
                self._log.warning("rate-limit store unreachable; counting in memory")
                limiter = self._memory
                allowed = limiter.hit(item, _PREFIX, who, scope, cost=cost)
            if not allowed:
                reset_at = limiter.get_window_stats(item, _PREFIX, who, scope).reset_time
                return item, max(1, math.ceil(reset_at - time.time()))
        return None

    def _limiter(self) -> SlidingWindowCounterRateLimiter:
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared
        return self._memory


def _actor() -> Actor | None:
    actor = g.get("actor")
    return actor if isinstance(actor, Actor) else None


def init_app(app: Flask, parts: Components) -> RateLimits:
    """Register after the authentication hook, so limits see the caller."""
    access = parts.access
    counters = RateLimits(access.redis_url)
    app.extensions["tokenvault.ratelimits"] = counters

    def refuse(limit: RateLimitItem, wait: int, scope: str) -> tuple[Response, int]:
        components().alerts.rate_limited(_actor() or ANONYMOUS, str(limit), scope, origin())
        response = jsonify({"error": error_body(RateLimited("too many requests"))})
        response.headers["Retry-After"] = str(wait)
        return response, 429

    @app.before_request
    def _limit() -> tuple[Response, int] | None:
        actor, endpoint = _actor(), request.endpoint
        if actor is not None:
            who = f"actor:{actor.id}"
            if refused := counters.refused(who, "all", access.rate_limit_for(actor.role)):
                return refuse(*refused, "all")
            # The relay's filled-in values are charged per value by the relay itself (ITEM_QUOTA), not here.
        elif endpoint == _LOGIN or endpoint in _ENROLMENT:
            who = f"addr:{request.remote_addr or 'unknown'}"
            scope = _LOGIN if endpoint == _LOGIN else "enrolment"
            if refused := counters.refused(who, scope, access.login_rate_limit):
                return refuse(*refused, scope)
        elif endpoint == _INBOUND:
            who = f"addr:{request.remote_addr or 'unknown'}"
            if refused := counters.refused(who, endpoint, access.rate_limit):
                return refuse(*refused, endpoint)
        return None

    app.extensions[ITEM_QUOTA] = functools.partial(_spend_items, counters, access)
    return counters


def _spend_items(counters: RateLimits, access: AccessSettings, count: int) -> None:
    """Charge the caller's detokenize quota with `count` values (a batch of 1,000 spends 1,000).

    Called by the detokenize view once the body is parsed, and by the relay once it found the
    tokens its templates name (one unit per distinct token), before the vault reads anything;
    over quota: RateLimited (429, Retry-After) and a `rate_limit` audit event.
    """
    actor = _actor()
    if actor is None or count < 1:
        return
    refused = counters.refused(f"actor:{actor.id}", _DETOKENIZE_ITEMS, access.detokenize_rate_limit_for(actor.role),
                               cost=count)
    if refused is not None:
        limit, wait = refused
        components().alerts.rate_limited(actor, str(limit), f"{_DETOKENIZE_ITEMS} items={count}", origin())
        raise RateLimited("too many values", retry_after=wait)
