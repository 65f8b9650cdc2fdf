"""The port to the outside: one HTTPS exchange with a route's upstream, pinned and bounded.

The domain says exactly what to send and under which limits; an adapter outside vault/
(api/upstream.py) implements `Transport` with a real HTTP client. The adapter resolves the host
once, asks `allow(address)` about every address it got (the SSRF policy), connects only to an
allowed one, verifies TLS against the system or the route's CAs for the route's host name, never
follows redirects, and stops reading at `max_response_bytes` or when `deadline_seconds` pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from vault.secret import Secret

__all__ = ["Exchange", "Answer", "Transport", "ClientCertificate"]


@dataclass(frozen=True)
class ClientCertificate:
    certificate_pem: str
    key_pem: Secret[str]


@dataclass(frozen=True)
class Exchange:
    method: str
    host: str
    port: int
    target: str  # path and query, already checked
    headers: list[tuple[str, str]]
    body: bytes
    allow: Callable[[str], None]  # raises ValidationFailed for an address the route may not reach
    ca_pem: str | None = None
    client_certificate: ClientCertificate | None = None
    connect_timeout: float = 3.0
    deadline_seconds: float = 10.0
    max_response_bytes: int = 1 << 20
    reuse_key: str = ""  # connections may be reused only between exchanges with the same key (route version)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    address: str = ""


class Transport(Protocol):
    def send(self, exchange: Exchange) -> Answer:
        """The upstream's answer; UpstreamFailed when it cannot be reached, times out or answers too much."""
        ...
