"""The buffering front's slow-body limits (api/http/buffering.py), driven through its ASGI interface.

A per-address cap on bodies being received (429 with Retry-After beyond it, before a byte is read) and a
minimum body rate after a grace period (408), so a drip-feed is cut early. The real server under slow
clients is tests/e2e/test_slow_clients.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from api.http.buffering import BodyLimits, BufferingFront, client_address
from api.settings import Settings
from vault.errors import ConfigurationError


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"got %d" % len(body)]


def scope(peer: str, *, length: int | None = 10, forwarded: str | None = None) -> dict[str, Any]:
    headers = [(b"host", b"x")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    if forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded.encode()))
    return {"type": "http", "method": "POST" if length else "GET", "path": "/", "query_string": b"",
            "headers": headers, "client": (peer, 40000), "server": ("127.0.0.1", 8080), "http_version": "1.1"}


class Exchange:
    """One request: its body arrives when `release` is set (or in `chunks`, `every` seconds apart)."""

    def __init__(self, chunks: list[bytes] | None = None, every: float = 0.0) -> None:
        self.release = asyncio.Event()
        self.chunks = chunks
        self.every = every
        self.reads = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        if self.chunks is None:
            await self.release.wait()
            return {"type": "http.request", "body": b"0123456789", "more_body": False}
        await asyncio.sleep(self.every)
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return self.sent[0]["status"] if self.sent else None

    def header(self, name: bytes) -> bytes | None:
        return dict(self.sent[0]["headers"]).get(name) if self.sent else None


def front(**limits: Any) -> BufferingFront:
    return BufferingFront(hello, limits=BodyLimits(**{"max_bytes": 1024, "seconds": 30.0, **limits}), threads=2)


def test_bodies_beyond_the_per_address_cap_are_refused_before_reading() -> None:
    async def run() -> None:
        app = front(per_address=2, slow_after_seconds=0.05)
        held = [Exchange(), Exchange()]
        tasks = [asyncio.create_task(app(scope("203.0.113.7"), one.receive, one.send)) for one in held]
        await asyncio.sleep(0.2)  # both slow now: they count
        third = Exchange()
        await app(scope("203.0.113.7"), third.receive, third.send)
        assert third.status == 429 and third.header(b"retry-after") == b"1" and third.reads == 0
        assert third.header(b"connection") == b"close"
        other = Exchange()
        other.release.set()
        await app(scope("198.51.100.1"), other.receive, other.send)  # another address is served
        no_body = Exchange()
        no_body.release.set()
        await app(scope("203.0.113.7", length=None), no_body.receive, no_body.send)  # a GET is not counted
        assert other.status == 200 and no_body.status == 200
        held[0].release.set()
        await tasks[0]
        again = Exchange()
        again.release.set()
        await app(scope("203.0.113.7"), again.receive, again.send)  # a slot freed is a slot again
        assert held[0].status == 200 and again.status == 200
        held[1].release.set()
        await tasks[1]
        assert app.receiving == {}

    asyncio.run(run())


def test_a_burst_of_quick_bodies_is_not_capped_but_one_turning_slow_is() -> None:
    async def run() -> None:
        app = front(per_address=2, slow_after_seconds=0.2)
        quick = [Exchange(chunks=[b"x" * 10], every=0.05) for _ in range(10)]  # all at once, none slow
        await asyncio.gather(*(app(scope("203.0.113.7"), one.receive, one.send) for one in quick))
        assert [one.status for one in quick] == [200] * 10
        held = [Exchange() for _ in range(3)]
        tasks = [asyncio.create_task(app(scope("203.0.113.7"), one.receive, one.send)) for one in held]
        await asyncio.sleep(0.4)  # all three turned slow; the third found the cap full
        assert [one.status for one in held] == [None, None, 429] and held[2].reads == 1
        for one in held:
            one.release.set()
        await asyncio.gather(*tasks)
        assert [one.status for one in held[:2]] == [200, 200] and app.receiving == {}

    asyncio.run(run())


def test_a_drip_fed_body_is_cut_after_the_grace_not_at_the_deadline() -> None:
    async def run() -> None:
        app = front(min_bytes_per_second=100.0, grace_seconds=0.3)
        drip = Exchange(chunks=[b"x"] * 10, every=0.1)
        started = time.monotonic()
        await app(scope("203.0.113.7"), drip.receive, drip.send)
        assert drip.status == 408 and time.monotonic() - started < 1.0
        steady = Exchange(chunks=[b"x" * 60] * 10, every=0.1)  # 600 B/s: above the minimum
        await app(scope("203.0.113.7", length=600), steady.receive, steady.send)
        assert steady.status == 200
        unlimited = front(min_bytes_per_second=0.0, grace_seconds=0.3)
        slow = Exchange(chunks=[b"x"] * 10, every=0.1)  # with no minimum only the deadline applies
        await unlimited(scope("203.0.113.7"), slow.receive, slow.send)
        assert slow.status == 200

    asyncio.run(run())


def test_the_address_is_the_one_trusted_proxies_report() -> None:
    chain = "192.0.2.1, 198.51.100.9"
    assert client_address(scope("10.0.0.2", forwarded=chain), 0) == "10.0.0.2"  # no trusted proxy: the peer
    assert client_address(scope("10.0.0.2", forwarded=chain), 1) == "198.51.100.9"
    assert client_address(scope("10.0.0.2", forwarded=chain), 2) == "192.0.2.1"
    assert client_address(scope("10.0.0.2", forwarded=chain), 3) == "10.0.0.2"  # fewer hops than trusted
    assert client_address(scope("10.0.0.2"), 1) == "10.0.0.2"


def test_settings_of_the_limits() -> None:
    settings = Settings.from_env({})
    assert (settings.bodies_per_address, settings.min_body_bytes_per_second, settings.body_grace_seconds) == (
        16, 1024.0, 5.0)
    for name in ("TOKENVAULT_MIN_BODY_BYTES_PER_SECOND", "TOKENVAULT_BODY_GRACE_SECONDS",
                 "TOKENVAULT_BODIES_PER_ADDRESS"):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({name: "-1"})
