"""Flood resistance for failed authentications: per source, before the database.

Bad credentials cost the vault a key-hash lookup and, before, an audit row each: 1,286 bad
API keys in 20 s wrote 1,286 rows and slowed every tokenize. Here each source address may
fail `TOKENVAULT_AUTH_FAILURE_RATE_LIMIT` times (default 20/minute); past that it gets 429
with Retry-After before its credentials are even looked at. Failures are not written one
by one: the trail counts them and writes one `authenticate` event per source, reason and
window, with `count=` (vault/audit/trail.py). Refused attempts are counted the same way.

Counters live in Redis when configured (shared by workers and hosts), else in memory per
worker; an unreachable Redis falls back to memory, as the request rate limits do. Kept apart
from api/http/ratelimits.py (limits on authenticated callers) on purpose: this one runs
before anyone is authenticated.
"""

from __future__ import annotations

import math
import time

from flask import Response, jsonify
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter

from api.http.errors import error_body
from api.http.tokens import components, origin
from vault.errors import RateLimited

__all__ = ["FailedAuthentications", "refused", "failed"]

_PREFIX = "tokenvault-authfail"
_RETRY_REDIS_AFTER = 5.0


class FailedAuthentications:
    """Per-source counters of failed authentications."""

    def __init__(self, limit: str, redis_url: str | None) -> None:
        self._item: RateLimitItem = parse(limit)
        self._memory: RateLimiter = MovingWindowRateLimiter(MemoryStorage())
        self._shared: RateLimiter | None = None
        if redis_url:
            storage: Storage = storage_from_string(redis_url, wrap_exceptions=True, socket_timeout=1,
                                                   socket_connect_timeout=1)
            self._shared = MovingWindowRateLimiter(storage)
        self._shared_down_until = 0.0

    def _limiter(self) -> RateLimiter:
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared
        return self._memory

    def _call(self, action: str, source: str) -> bool:
        limiter = self._limiter()
        try:
            return bool(getattr(limiter, action)(self._item, _PREFIX, source))
        except StorageError:
            self._shared_down_until = time.monotonic() + _RETRY_REDIS_AFTER
            return bool(getattr(self._memory, action)(self._item, _PREFIX, source))

    def wait_seconds(self, source: str) -> int | None:
        """None while `source` may still try; else the seconds until its window frees a slot."""
        if self._call("test", source):
            return None
        limiter = self._limiter()
        try:
            reset_at = limiter.get_window_stats(self._item, _PREFIX, source).reset_time
        except StorageError:
            reset_at = time.time() + self._item.get_expiry()
        return max(1, math.ceil(reset_at - time.time()))

    def count(self, source: str) -> None:
        self._call("hit", source)


def refused(counters: FailedAuthentications) -> tuple[Response, int] | None:
    """429 before authentication if this source has failed too often; counted, never written one by one."""
    here = origin()
    wait = counters.wait_seconds(here.source or "unknown")
    if wait is None:
        return None
    parts = components()
    parts.trail.note_failed_authentication(parts.engine, here, RateLimited.code)
    response = jsonify({"error": error_body(RateLimited("too many failed authentications"))})
    response.headers["Retry-After"] = str(wait)
    return response, 429


def failed(counters: FailedAuthentications) -> None:
    counters.count(origin().source or "unknown")
