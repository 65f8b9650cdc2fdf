"""Prometheus metrics, correct across server workers (multiprocess mode).

api/http/server.py sets PROMETHEUS_MULTIPROC_DIR in the master before any worker
imports prometheus_client, so every worker writes its own files and /metrics
aggregates them. Labels never carry tokens or values: routes are URL rules.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from vault.keys.provider import KekInfo, KeyProvider
from vault.secret import Secret

__all__ = ["InstrumentedProvider", "render", "REQUESTS", "LATENCY", "OPERATIONS", "observe_key_cache",
           "observe_audit_write", "authorised", "observe_relay_call"]

REQUESTS = Counter("tokenvault_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram("tokenvault_http_request_seconds", "HTTP request latency", ["route", "method"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
OPERATIONS = Counter("tokenvault_operations_total", "Vault operations per item", ["operation", "kind", "role",
                                                                                    "outcome"])
KMS_CALLS = Counter("tokenvault_kms_calls_total", "Calls to the key provider", ["provider", "method", "outcome"])
KMS_LATENCY = Histogram("tokenvault_kms_call_seconds", "Key provider call latency", ["provider", "method"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
KEY_CACHE = Counter("tokenvault_key_cache_lookups_total", "Unwrapped-key cache lookups", ["cache", "result"])
AUDIT_WRITE = Histogram("tokenvault_audit_write_seconds", "Time to append audit events in a transaction",
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))

RELAY_CALLS = Counter("tokenvault_relay_calls_total", "Relay calls per route and upstream status (or error code)",
                      ["route", "outcome"])
RELAY_LATENCY = Histogram("tokenvault_relay_upstream_seconds", "Time the route's upstream took to answer", ["route"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def observe_relay_call(route: str, outcome: str, seconds: float) -> None:
    """Route names are admin-approved (at most a few dozen), so the label stays bounded."""
    RELAY_CALLS.labels(route, outcome).inc()
    RELAY_LATENCY.labels(route).observe(seconds)


def observe_key_cache(cache: str, hit: bool) -> None:
    KEY_CACHE.labels(cache, "hit" if hit else "miss").inc()


def observe_audit_write(seconds: float) -> None:
    AUDIT_WRITE.observe(seconds)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def authorised(header: str, token: Secret[str] | None, *, public: bool = False) -> bool:
    """/metrics needs the bearer token TOKENVAULT_METRICS_TOKEN; without one it answers nobody (deny by
    default), unless the operator opened it on purpose with TOKENVAULT_METRICS_PUBLIC=1."""
    if public:
        return True
    if token is None:
        return False
    return hmac.compare_digest(header.encode(), f"Bearer {token.expose()}".encode())


class InstrumentedProvider:
    """Counts and times every key-provider call; otherwise the provider itself."""

    def __init__(self, inner: KeyProvider) -> None:
        self._inner = inner
        self.name = inner.name

    @property
    def calls(self) -> int:
        return self._inner.calls

    def _timed(self, method: str, *args: Any) -> Any:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return getattr(self._inner, method)(*args)
        except Exception:
            outcome = "error"
            raise
        finally:
            KMS_CALLS.labels(self.name, method, outcome).inc()
            KMS_LATENCY.labels(self.name, method).observe(time.perf_counter() - start)

    def initialise(self) -> bool:
        return bool(self._timed("initialise"))

    def generate(self) -> tuple[Secret[bytes], str]:
        result: tuple[Secret[bytes], str] = self._timed("generate")
        return result

    def wrap(self, keys: Sequence[Secret[bytes]]) -> list[str]:
        result: list[str] = self._timed("wrap", keys)
        return result

    def unwrap(self, wrapped: Sequence[str]) -> list[Secret[bytes] | None]:
        result: list[Secret[bytes] | None] = self._timed("unwrap", wrapped)
        return result

    def rewrap(self, wrapped: Sequence[str]) -> list[str | None]:
        result: list[str | None] = self._timed("rewrap", wrapped)
        return result

    def rotate(self) -> int:
        return int(self._timed("rotate"))

    def info(self) -> KekInfo:
        result: KekInfo = self._timed("info")
        return result

    def set_min_decryption_version(self, version: int) -> None:
        self._timed("set_min_decryption_version", version)

    def destroy_versions_below(self, version: int) -> None:
        self._timed("destroy_versions_below", version)

    def check(self) -> None:
        self._timed("check")
