"""The relay's HTTPS client: vault.relay.upstream.Transport over urllib3, pinned and bounded.

One connection per call, to one address: the host is resolved once, every address it resolves
to must pass the route's SSRF policy (a name that also points inside is refused whole), and the
connection goes to the first of them while TLS checks the certificate against the route's host
name (SNI too), with the route's CAs if it has them, else the system's. No redirects are
followed (a 3xx is handed back as the answer, its Location header dropped by the relay), no
retries. The body is read in pieces until the response limit; a compressed answer is refused,
since compression would hide a PAN from the detector.

The route's `timeout` bounds the whole call, not each read: an upstream that drips its status line
and headers a byte at a time never lets a per-read timeout fire. A watchdog thread shuts the call's
socket down when the deadline passes, which ends any blocked connect, handshake or read at once;
the call then fails as timed out (never as a short answer) and its pool is dropped.

A client key (mTLS) is handed to OpenSSL through an anonymous memory file (memfd), so it never
touches a disk.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import os
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError, NewConnectionError, ReadTimeoutError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from vault.errors import UpstreamFailed
from vault.relay.upstream import Answer, ClientCertificate, Exchange

__all__ = ["HttpsTransport"]

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (once, for this call)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    fd = os.memfd_create("tokenvault-relay", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _context(ca_pem: str | None, client: ClientCertificate | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        with _memory_file(client.certificate_pem.encode()) as cert, \
                _memory_file(client.key_pem.expose().encode()) as key:
            context.load_cert_chain(cert, key)
    return context


class _Deadline:
    """One call's deadline: when it passes, the socket of the connection in use is shut down."""

    def __init__(self, seconds: float, watchdog: _Watchdog) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._connection: Any = None
        self._lock = threading.Lock()
        self._watchdog = watchdog

    def __enter__(self) -> _Deadline:
        self._watchdog.watch(self)
        _in_call.deadline = self
        return self

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self.done = True
        _in_call.deadline = None

    def attach(self, connection: Any) -> None:
        """The connection this call uses (called from the call's own thread)."""
        with self._lock:
            self._connection = connection
            if self.expired:
                self._cut()

    def expire(self) -> None:
        with self._lock:
            if self.done:
                return
            self.expired = True
            self._cut()

    def _cut(self) -> None:
        sock = getattr(self._connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread that expires every call's deadline in time order.

    A `threading.Timer` per call cost a thread start per call (measured: about 6 ms of a relay call
    on a loaded 2-core machine); here a call only pushes onto a heap, and wakes the thread only when
    its deadline is the new earliest one. Finished calls stay in the heap until their time comes.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
        with self._wake:
            if self._thread is None:  # started on first use: after a server forks its workers
                self._thread = threading.Thread(target=self._run, name="tokenvault-relay-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._heap[0][2] is deadline:
                self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].expire()
                self._wake.wait(self._heap[0][0] - now if self._heap else None)


_in_call = threading.local()  # the deadline of the call this thread is making, if any


class _DeadlineConnection(urllib3.connection.HTTPSConnection):
    """Registers itself with the calling thread's deadline, so the timer can cut its socket."""

    def connect(self) -> None:
        deadline = getattr(_in_call, "deadline", None)
        if deadline is not None:
            deadline.attach(self)
        super().connect()
        if deadline is not None:
            deadline.attach(self)  # the socket now exists: cut it at once if the deadline passed meanwhile

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_in_call, "deadline", None)
        if deadline is not None:
            deadline.attach(self)  # a pooled connection, reused: this call's deadline now governs it
        super().request(*args, **kwargs)


class _NotConnected(Exception):
    """Connecting to one address failed before anything was sent: the next checked one may be tried."""


class _DeadlinePool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineConnection


class HttpsTransport:
    """Keeps one small connection pool per (route version, checked address): TLS handshakes are reused
    for the same route, never across routes or addresses, and a pool whose call failed is dropped."""

    def __init__(self, resolver: Resolver = resolve, max_pools: int = 64) -> None:
        self._resolve = resolver
        self._pools: OrderedDict[tuple[str, str], urllib3.HTTPSConnectionPool] = OrderedDict()
        self._lock = threading.Lock()
        self._max_pools = max_pools
        self._watchdog = _Watchdog()

    def send(self, exchange: Exchange) -> Answer:
        try:
            addresses = [str(ipaddress.ip_address(exchange.host))]
        except ValueError:
            addresses = self._resolve(exchange.host, exchange.port)
        if not addresses:
            raise UpstreamFailed("the upstream host does not resolve")
        for address in addresses:
            exchange.allow(address)  # ValidationFailed with the reason: nothing is sent
        # Only the checked addresses, in resolver order; the next one only if connecting failed.
        with _Deadline(exchange.deadline_seconds, self._watchdog) as deadline:
            for address in addresses[:-1]:
                with contextlib.suppress(_NotConnected):
                    return self._exchange(exchange, address, deadline)
            return self._exchange(exchange, addresses[-1], deadline, last=True)

    def _pool(self, exchange: Exchange, address: str) -> tuple[tuple[str, str], urllib3.HTTPSConnectionPool]:
        key = (exchange.reuse_key, address)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return key, pool
        try:
            context = _context(exchange.ca_pem, exchange.client_certificate)
        except (ssl.SSLError, OSError, ValueError):
            raise UpstreamFailed("the route's TLS material could not be loaded") from None
        timeout = urllib3.Timeout(connect=exchange.connect_timeout, read=exchange.deadline_seconds)
        pool = _DeadlinePool(
            host=address, port=exchange.port, ssl_context=context, server_hostname=exchange.host,
            assert_hostname=exchange.host, timeout=timeout, retries=False, maxsize=4, block=False)
        with self._lock:
            self._pools[key] = pool
            while len(self._pools) > self._max_pools:
                self._pools.popitem(last=False)[1].close()
        return key, pool

    def _drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            pool = self._pools.pop(key, None)
        if pool is not None:
            pool.close()

    def _exchange(self, exchange: Exchange, address: str, deadline: _Deadline, *, last: bool = False) -> Answer:
        host_header = f"[{exchange.host}]" if ":" in exchange.host else exchange.host
        if exchange.port != 443:
            host_header += f":{exchange.port}"
        headers = {name: value for name, value in exchange.headers}
        headers.update({"host": host_header, "accept-encoding": "identity"})
        key, pool = self._pool(exchange, address)
        try:
            response = pool.urlopen(exchange.method, exchange.target, body=exchange.body or None, headers=headers,
                                    redirect=False, retries=False, preload_content=False, assert_same_host=False,
                                    decode_content=False)
            try:
                answer = self._read(response, exchange, deadline, address)
                if deadline.expired:  # a cut socket reads as the end of the body: never a short answer
                    raise UpstreamFailed("the upstream timed out", timeout=True)
            except BaseException:
                response.close()  # never hand a half-read connection to the next call
                raise
            response.release_conn()
            return answer
        except HTTPError as error:
            self._drop(key)
            if deadline.expired:
                raise UpstreamFailed("the upstream timed out", timeout=True) from None
            if isinstance(error, NewConnectionError):  # (a subclass of urllib3's TimeoutError: tested first)
                if not last:
                    raise _NotConnected() from None
                raise UpstreamFailed("the upstream could not be reached") from None
            if isinstance(error, (ReadTimeoutError, Urllib3Timeout)):
                raise UpstreamFailed("the upstream timed out", timeout=True) from None
            raise UpstreamFailed("the upstream could not be reached") from None
        except UpstreamFailed:
            self._drop(key)
            raise

    @staticmethod
    def _read(response: Any, exchange: Exchange, deadline: _Deadline, address: str) -> Answer:
        encoding = (response.headers.get("content-encoding") or "identity").lower()
        if encoding != "identity":
            raise UpstreamFailed("the upstream answered with a compressed body")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > exchange.max_response_bytes:
            raise UpstreamFailed("the upstream's answer exceeds the route's limit")
        chunks, size = [], 0
        while True:
            if deadline.expired or time.monotonic() > deadline.at:
                raise UpstreamFailed("the upstream timed out", timeout=True)
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > exchange.max_response_bytes:
                raise UpstreamFailed("the upstream's answer exceeds the route's limit")
            chunks.append(chunk)
        return Answer(status=response.status, headers=list(response.headers.items()), body=b"".join(chunks),
                      address=address)
