"""A buffering front for the WSGI app: whole requests in, whole responses out, slow clients on the event loop.

A WSGI app reads its body with blocking calls, so a client that trickles its body holds a worker thread
for as long as it likes (measured: 25 such clients on the login endpoint, which reads its body before any
credential is checked, stopped every other request; docs/scaling.md). This is what a buffering proxy
would do, inside the server's own asyncio loop (granian's ASGI interface): the body is received
asynchronously, with the size limit (413 as soon as it is passed, for Content-Length and chunked alike,
nothing read beyond it) and a deadline (408); only a complete request is handed to a thread, which runs
the app and returns the whole response; sending it to a slow reader is again the loop's business. A
trickling client costs a coroutine and a socket, never a thread.

A trickling body still holds a socket and a coroutine, so two limits bound what one address can hold
(issue #18): at most `per_address` slow bodies (not complete 1 s after their head) being received at once
from one client address (more are answered 429 with Retry-After: a new one at once, before a byte of its body
is read; one turning slow when its address is at the cap, at that moment), and after `grace_seconds` a body
must have arrived at `min_bytes_per_second` on average since its head (else 408), so a drip-feed is cut in
seconds rather than at the 30 s deadline. The address counted is `client_address`: the peer, or the one the
trusted proxies (`proxy_hops`) report, as the app sees it. Counts are per worker process.

The WSGI environ is built here (PEP 3333 from the ASGI scope). Header names with `_` are dropped, as
nginx does: `X_Forwarded_For` would otherwise arrive as `HTTP_X_FORWARDED_FOR`, the same key as
`X-Forwarded-For`. A buffered body reaches the app with its exact Content-Length, never as chunks.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from api.http.proxies import trusted_peer

__all__ = ["BufferingFront", "BodyLimits", "client_address"]

_log = logging.getLogger("tokenvault.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REFUSALS = {
    408: b'{"error": {"code": "request_timeout", "message": "the request body did not arrive in time"}}',
    413: b'{"error": {"code": "payload_too_large", "message": "payload too large"}}',
    429: b'{"error": {"code": "rate_limited", "message": "too many request bodies in flight from this address"}}',
    503: b'{"error": {"code": "service_unavailable", "message": "the request did not finish in time"}}',
}
EXIT_STUCK = 75  # a worker whose spare threads all hang exits; granian starts a fresh one
EXIT_DELAY_SECONDS = 0.5
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class BodyLimits:
    """How much, how long and how slowly a request body may arrive, and how many at once per address."""

    max_bytes: int
    seconds: float  # the whole body, from its head (408 after)
    per_address: int = 0  # bodies being received at once from one address (0: no cap)
    min_bytes_per_second: float = 0.0  # average rate a body must keep after its grace (0: none)
    grace_seconds: float = 5.0
    slow_after_seconds: float = 1.0  # a body counts against its address once it has taken this long
    proxy_hops: int = 0  # trusted reverse proxies in front (TOKENVAULT_PROXY_HOPS)
    forwarded_allow: tuple[IPv4Network | IPv6Network, ...] | None = None  # peers believed (None: every peer)


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BufferingFront:
    """ASGI app around a WSGI app; `threads` run the WSGI app, each on one complete request at a time."""

    def __init__(self, app: WSGIApp, *, limits: BodyLimits, threads: int, request_seconds: float = 30.0,
                 on_stuck: Callable[[], None] | None = None) -> None:
        self.app = app
        self.limits = limits
        self.receiving: Counter[str] = Counter()  # bodies being received, per address (this process)
        # The watchdog: a request still in the app after `request_seconds` is answered 503 and its thread
        # written off (Python cannot stop a thread); one of `threads` spare threads takes its place. When
        # the spares are all written off too, `on_stuck` ends the worker (granian starts a fresh one).
        self.request_seconds = request_seconds
        self.spares = threads
        self.stuck = 0
        self._on_stuck = on_stuck or (lambda: os._exit(EXIT_STUCK))
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(threads)  # requests in the app at once, written-off ones excluded
        self.pool = ThreadPoolExecutor(max_workers=threads * 2, thread_name_prefix="tokenvault-wsgi")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets; lifespan is not used (granian's `asginl` interface)
        address = (client_address(scope, self.limits.proxy_hops, self.limits.forwarded_allow)
                   if _has_body(scope) else None)
        try:
            if address is not None and self._at_cap(address):
                raise _Refused(429)  # before reading a byte of the body
            body = await self._body(scope, receive, address)
        except _Refused as refused:
            extra = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())] if refused.status == 429 else []
            await _send(send, refused.status, [(b"content-type", b"application/json"), (b"connection", b"close"),
                                               (b"server", b""), *extra], _REFUSALS[refused.status])
            return
        environ = _environ(scope, body)
        loop = asyncio.get_running_loop()
        while not self._slots.acquire(blocking=False):
            await asyncio.sleep(0.005)  # every thread busy: wait here, on the loop, not in the pool's queue
        future = loop.run_in_executor(self.pool, _run, self.app, environ)
        try:
            status, headers, payload = await asyncio.wait_for(asyncio.shield(future), self.request_seconds)
        except TimeoutError:
            stuck = self._write_off(future)
            await _send(send, 503, [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"server", b"")], _REFUSALS[503])
            if stuck > self.spares:  # after the answer, so this client still gets its 503
                _log.critical("every spare thread hangs: this worker exits and granian starts a fresh one")
                # Not at once: granian writes the answer after this coroutine returns, and an exit now
                # would cut that client's 503 off (seen as "connection closed without response").
                loop.call_later(EXIT_DELAY_SECONDS, self._on_stuck)
            return
        finally:
            self._slots.release()
        await _send(send, status, headers, payload)

    def _write_off(self, future: asyncio.Future[Any]) -> int:
        """Count a hung request's thread as lost (until it returns, if ever); returns how many are."""
        with self._lock:
            self.stuck += 1
            stuck = self.stuck
        future.add_done_callback(lambda _done: self._unstick())
        _log.error("request exceeded TOKENVAULT_REQUEST_SECONDS=%g: answered 503, its thread written off "
                   "(%d of %d spares in use)", self.request_seconds, stuck, self.spares)
        return stuck

    def _unstick(self) -> None:
        with self._lock:
            self.stuck -= 1

    def _at_cap(self, address: str) -> bool:
        return bool(self.limits.per_address) and self.receiving[address] >= self.limits.per_address

    async def _body(self, scope: Scope, receive: Receive, address: str | None) -> bytes:
        """The whole body, or 413 / 408 / 429. A body not complete `slow_after_seconds` after its head counts
        against its address from then on (a burst of quick bodies never does; measured: 128 keep-alive
        clients of one address, counted from their heads, met the cap with nothing slow)."""
        limits = self.limits
        declared = _content_length(scope)
        if declared is not None and declared > limits.max_bytes:
            raise _Refused(413)  # before reading a byte of it
        chunks: list[bytes] = []
        total = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        counting = address if limits.per_address else None  # the address this body may count against
        counted = False
        pending: asyncio.Future[Message] | None = None
        try:
            while True:
                now = loop.time()
                if counting is not None and not counted and now >= started + limits.slow_after_seconds:
                    if self._at_cap(counting):
                        raise _Refused(429)
                    self.receiving[counting] += 1
                    counted = True
                due = started + limits.seconds
                if limits.min_bytes_per_second:
                    # The moment the average since the grace would fall below the minimum rate.
                    due = min(due, started + limits.grace_seconds + total / limits.min_bytes_per_second)
                if now >= due:
                    raise _Refused(408)
                wake = due if counting is None or counted else min(due, started + limits.slow_after_seconds)
                # Waited on, never cancelled while the body goes on: a chunk is never lost to a timer.
                pending = pending or asyncio.ensure_future(receive())
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, wake - now))
                if not done:
                    continue
                message, pending = pending.result(), None
                if message["type"] != "http.request":  # the client went away
                    raise _Refused(408)
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limits.max_bytes:
                    raise _Refused(413)  # stop reading at the first byte past the limit
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
        finally:
            if pending is not None:
                pending.cancel()
            if counting is not None and counted:
                self.receiving[counting] -= 1
                if not self.receiving[counting]:
                    del self.receiving[counting]


def client_address(scope: Scope, proxy_hops: int,
                   allowed: tuple[IPv4Network | IPv6Network, ...] | None = None) -> str:
    """The address the per-address cap counts: the peer's, or with `proxy_hops` trusted proxies in front the
    one they report in X-Forwarded-For, picked as werkzeug's ProxyFix picks it for the app (the `proxy_hops`-th
    from the right); the peer's if the header has fewer entries, or if the peer is not one of the `allowed`
    proxies (TOKENVAULT_FORWARDED_ALLOW_IPS, as api.http.proxies decides for the app). The one place to change
    what "address" means."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not proxy_hops or not trusted_peer(peer, allowed):
        return peer
    forwarded = [value.decode("latin-1") for name, value in scope.get("headers", ())
                 if name.lower() == b"x-forwarded-for"]
    hops = [hop.strip() for hop in ",".join(forwarded).split(",") if hop.strip()]
    return hops[-proxy_hops] if len(hops) >= proxy_hops else peer


def _has_body(scope: Scope) -> bool:
    """Whether the head announces a body (a length above 0, or a transfer encoding such as chunked)."""
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"transfer-encoding" or (lowered == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] if server[1] is not None else 80),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0] if client else "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if "_" in name or name in ("content-length", "transfer-encoding"):
            continue  # the body is whole now; its length is the one above
        key = "CONTENT_TYPE" if name == "content-type" else "HTTP_" + name.upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _run(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The app, in a worker thread, with its whole response collected (our answers are bounded JSON)."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
        started[:] = [(status, headers)]
        return lambda _data: None

    result = app(environ, start_response)
    try:
        payload = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    return (int(status.split(" ", 1)[0]),
            [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers], payload)


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
