"""A buffering front for the WSGI app: whole requests in, whole responses out, slow clients on the event loop.

A WSGI app reads its body with blocking calls, so a client that trickles its body holds a worker thread
for as long as it likes (measured: 25 such clients on the login endpoint, which reads its body before any
credential is checked, stopped every other request; docs/scaling.md). This is what a buffering proxy
would do, inside the server's own asyncio loop (granian's ASGI interface): the body is received
asynchronously, with the size limit (413 as soon as it is passed, for Content-Length and chunked alike,
nothing read beyond it) and a deadline (408); only a complete request is handed to a thread, which runs
the app and returns the whole response; sending it to a slow reader is again the loop's business. A
trickling client costs a coroutine and a socket, never a thread.

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
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["BufferingFront"]

_log = logging.getLogger("tokenvault.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_REFUSALS = {
    408: b'{"error": {"code": "request_timeout", "message": "the request body did not arrive in time"}}',
    413: b'{"error": {"code": "payload_too_large", "message": "payload too large"}}',
    503: b'{"error": {"code": "service_unavailable", "message": "the request did not finish in time"}}',
}
EXIT_STUCK = 75  # a worker whose spare threads all hang exits; granian starts a fresh one


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class BufferingFront:
    """ASGI app around a WSGI app; `threads` run the WSGI app, each on one complete request at a time."""

    def __init__(self, app: WSGIApp, *, max_body_bytes: int, body_seconds: float, threads: int,
                 request_seconds: float = 30.0, on_stuck: Callable[[], None] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_seconds = body_seconds
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
        try:
            body = await self._body(scope, receive)
        except _Refused as refused:
            await _send(send, refused.status, [(b"content-type", b"application/json"), (b"connection", b"close"),
                                               (b"server", b"")], _REFUSALS[refused.status])
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
                self._on_stuck()
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

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise _Refused(413)  # before reading a byte of it
        chunks: list[bytes] = []
        total = 0
        try:
            async with asyncio.timeout(self.body_seconds):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        raise _Refused(408)
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > self.max_body_bytes:
                        raise _Refused(413)  # stop reading at the first byte past the limit
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            raise _Refused(408) from None


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
