"""The serving front's operational guards (issue #18): the per-request watchdog and trusted proxies.

The watchdog runs the real BufferingFront (the ASGI front granian serves) around a WSGI app whose
/hang never returns: the request must be answered 503 after TOKENVAULT_REQUEST_SECONDS, the thread
written off for a spare, and the worker ended once the spares hang too.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import ip_network
from typing import Any

import pytest

from api.http.buffering import EXIT_DELAY_SECONDS, BodyLimits, BufferingFront
from api.http.proxies import TrustedProxies
from api.settings import Settings
from vault.errors import ConfigurationError

RELEASE = threading.Event()


def _app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/hang":
        RELEASE.wait(30)  # a request stuck inside the app (a lock, a dead socket without timeout)
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


async def _call(front: BufferingFront, path: str) -> tuple[int, dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "client": ("127.0.0.1", 5000)}
    await front(scope, receive, send)
    return int(sent[0]["status"]), dict(sent[0]["headers"])


def test_a_hung_request_is_answered_503_and_its_thread_replaced() -> None:
    ended: list[bool] = []
    front = BufferingFront(_app, limits=BodyLimits(max_bytes=1024, seconds=5), threads=1, request_seconds=0.5,
                           on_stuck=lambda: ended.append(True))

    async def scenario() -> list[Any]:
        started = time.monotonic()
        status, headers = await asyncio.wait_for(_call(front, "/hang"), 5)
        took = time.monotonic() - started
        # The only thread hangs, yet the next request is served by a spare.
        ok, _ = await asyncio.wait_for(_call(front, "/ok"), 5)
        assert not ended
        second, _ = await asyncio.wait_for(_call(front, "/hang"), 5)  # the spare hangs too
        assert not ended  # the 503 is written before the worker ends
        await asyncio.sleep(EXIT_DELAY_SECONDS + 0.2)
        return [status, headers, took, ok, second]

    try:
        status, headers, took, ok, second = asyncio.run(scenario())
    finally:
        RELEASE.set()
    assert (status, headers[b"retry-after"], ok, second) == (503, b"1", 200, 503)
    assert 0.5 <= took < 2.0, took
    assert ended == [True]  # every spare written off: the worker ends, granian starts a fresh one


def _peer_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [str(environ.get("REMOTE_ADDR")).encode()]


@pytest.mark.parametrize(("peer", "seen"), [("10.0.0.7", "203.0.113.9"), ("198.51.100.1", "198.51.100.1")])
def test_forwarded_for_is_believed_only_from_listed_proxies(peer: str, seen: str) -> None:
    settings = Settings.from_env({"TOKENVAULT_FORWARDED_ALLOW_IPS": "10.0.0.0/8, 127.0.0.1"})
    assert settings.proxy_hops == 1 and settings.forwarded_allow == (ip_network("10.0.0.0/8"),
                                                                     ip_network("127.0.0.1/32"))
    app = TrustedProxies(_peer_app, hops=settings.proxy_hops, allowed=settings.forwarded_allow)
    environ = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": "203.0.113.9", "wsgi.url_scheme": "http",
               "HTTP_HOST": "vault", "REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    assert b"".join(app(environ, lambda *_: None)).decode() == seen


def test_a_bad_proxy_list_and_a_retired_worker_class_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="TOKENVAULT_FORWARDED_ALLOW_IPS"):
        Settings.from_env({"TOKENVAULT_FORWARDED_ALLOW_IPS": "proxy.example"})
    with pytest.raises(ConfigurationError, match="TOKENVAULT_WORKER_CLASS no longer applies"):
        Settings.from_env({"TOKENVAULT_WORKER_CLASS": "gthread"}).check_serving()
