"""The HTTP session under hvac and the kinds of failure the Vault provider tells apart.

Kept apart from the provider so that the retry and breaker logic in kms/vault_transit.py reads
against named outcomes: unreachable (counts against the breaker), denied (log in again), rejected.
"""

from __future__ import annotations

import threading
from typing import Any

import requests

__all__ = ["CountingSession", "Unreachable", "Denied", "Rejected", "REASONS"]


class CountingSession(requests.Session):
    """Counts HTTP round trips and remembers each thread's last status code.

    The status is needed because hvac maps some codes (412) to a generic exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self._count_lock = threading.Lock()
        self._local = threading.local()
        self.round_trips = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self._count_lock:
            self.round_trips += 1
        self._local.status = None
        response = super().send(request, **kwargs)
        self._local.status = response.status_code
        return response

    def last_status(self) -> int | None:
        status = getattr(self._local, "status", None)
        return status if isinstance(status, int) else None


class Unreachable(Exception):
    """Vault could not serve (down, sealed, overloaded): counts against the breaker."""


class Denied(Exception):
    """Vault refused our token (401/403)."""


class Rejected(Exception):
    """Vault answered with an error the caller did not handle."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


REASONS = {
    412: "precondition failed (replication lag)",
    429: "rate limited or standby",
    500: "internal error",
    501: "not initialised",
    502: "bad gateway",
    503: "sealed or unavailable",
}
