"""A small circuit breaker for calls to a remote key service.

When Vault is down, every request would otherwise wait for connect timeouts and
retries before failing. After `failure_threshold` consecutive failures the
breaker opens and calls fail fast for `reset_timeout` seconds; then it lets one
probe through (half-open): success closes it, failure opens it again.

The clock is injectable so tests need not sleep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Thread-safe consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout <= 0:
            raise ValueError("reset_timeout must be positive")
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_started: float | None = None

    @property
    def state(self) -> State:
        with self._lock:
            return self._state()

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def _state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at < self._reset_timeout:
            return "open"
        return "half_open"

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when not open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._reset_timeout - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go ahead now? In half-open state only one probe at a time may.

        A probe that never reports back (a caller bug) blocks others for at most
        one more reset_timeout, so the breaker cannot stick half-open forever.
        """
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "open":
                return False
            now = self._clock()
            if self._probe_started is not None and now - self._probe_started < self._reset_timeout:
                return False
            self._probe_started = now
            return True

    def record_success(self) -> None:
        """The service answered: close the breaker and forget past failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_started = None

    def record_failure(self) -> None:
        """The service could not serve: count it, and open (or re-open) when due."""
        with self._lock:
            self._failures += 1
            self._probe_started = None
            if self._opened_at is not None or self._failures >= self._threshold:
                self._opened_at = self._clock()
