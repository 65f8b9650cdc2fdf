"""The HTTP server under `tokenvault serve`: granian (ASGI) in front of the Flask app, with our settings.

Why (measured side by side with gunicorn sync, gthread and gevent, waitress and granian's own WSGI by
bench/slow_clients.py; figures in docs/scaling.md): granian reads connections in a Rust event loop, so a
client that trickles its request head holds a socket, not a Python thread; heads must be complete within
10 s. Bodies are received on the asyncio loop by api/http/buffering.py (limit, deadline), so a client that
trickles its body holds a coroutine; only complete requests reach the app's threads. Keep-alive works for
HTTP/1.1. SIGTERM stops accepting, lets requests in flight finish (up to 30 s) and ends the workers.

No preload: every worker process imports and builds its own app, so key material is never created in
the master and inherited. Access logging is off: our own JSON log line records the route pattern,
never the raw path (a path may hold a token or, by mistake, a card number).
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.http.logs import server_log_config
from api.settings import Settings
from vault.errors import ConfigurationError

__all__ = ["ServerOptions", "BindUnavailable", "serve", "main"]

APP = "api.http.app:wsgi_app()"  # `()`: a factory, each worker calls it once
BODY_SECONDS = 30.0  # a body not complete 30 s after its head is a 408
EXIT_BIND = 3  # the address is in use or not ours (docs: README, CLI exit codes)
DRAIN_SECONDS = 30
HEADER_READ_MS = 10_000  # a request head not complete after 10 s is dropped
HEADER_BUFFER_BYTES = 64 * 1024  # request line plus headers; more is refused
THREADS_PER_WORKER = 8


class BindUnavailable(RuntimeError):
    """The address cannot be listened on (in use, or not ours): the message names TOKENVAULT_BIND."""


@dataclass(frozen=True)
class ServerOptions:
    bind: str
    workers: int
    threads: int = THREADS_PER_WORKER
    log_level: str = "info"
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, bind: str, workers: int, log_level: str) -> ServerOptions:
        return cls(bind=bind, workers=workers, log_level=log_level,
                   threads=int(env.get("TOKENVAULT_THREADS") or THREADS_PER_WORKER),
                   tls_cert=env.get("TOKENVAULT_TLS_CERT") or None, tls_key=env.get("TOKENVAULT_TLS_KEY") or None)

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.bind.rpartition(":")
        if not host or not port.isdigit():
            raise BindUnavailable(f"bind address {self.bind!r} is not host:port; set TOKENVAULT_BIND or --bind")
        return host.strip("[]"), int(port)


def check_bind(options: ServerOptions) -> None:
    """Fail with a hint before any worker starts, rather than after granian's own retries."""
    host, port = options.host_port()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "is already in use" if error.errno == errno.EADDRINUSE else f"cannot be used ({error.strerror})"
            raise BindUnavailable(f"{host}:{port} {why}; choose another with TOKENVAULT_BIND=host:port "
                                  "or --bind") from None


def asgi_app() -> Any:
    """granian's factory, called once in each worker: the WSGI app named by TOKENVAULT_WSGI_APP behind the
    buffering front."""
    from api.http.buffering import BodyLimits, BufferingFront

    _keep_an_early_stop()
    target = os.environ.get("TOKENVAULT_WSGI_APP") or APP
    module_name, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module_name), attribute.removesuffix("()"))
    app = found() if attribute.endswith("()") else found
    settings = Settings.from_env()
    limits = BodyLimits(max_bytes=settings.max_body_bytes, seconds=BODY_SECONDS,
                        per_address=settings.bodies_per_address,
                        min_bytes_per_second=settings.min_body_bytes_per_second,
                        grace_seconds=settings.body_grace_seconds, proxy_hops=settings.proxy_hops,
                        forwarded_allow=settings.forwarded_allow)
    return BufferingFront(app, limits=limits, threads=int(os.environ.get("TOKENVAULT_THREADS") or THREADS_PER_WORKER),
                          request_seconds=settings.request_seconds)


def _keep_an_early_stop() -> None:
    """A stop signal that reaches a worker while it is still building its app (before granian's worker
    installs its handler) would meet the handler inherited from the master and be lost: the worker would
    then serve on until the master's kill timeout. Record it, and send it again once granian's handler is
    in place (measured: SIGTERM 1 s after start otherwise took the full 30 s)."""
    stops = (signal.SIGTERM, signal.SIGINT)
    received: list[int] = []

    def record(signum: int, _frame: Any) -> None:
        received.append(signum)

    for signum in stops:
        signal.signal(signum, record)

    def redeliver() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if all(signal.getsignal(signum) is not record for signum in stops):
                if received:
                    os.kill(os.getpid(), received[0])
                return
            time.sleep(0.05)

    threading.Thread(target=redeliver, name="tokenvault-early-stop", daemon=True).start()


def server(options: ServerOptions) -> Any:
    """A granian server for `asgi_app` with our limits."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    host, port = options.host_port()
    return Server(
        "api.http.server:asgi_app", address=host, port=port, interface=Interfaces.ASGINL, factory=True,
        workers=options.workers, blocking_threads=1,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_MS, keep_alive=True,
                                     max_buffer_size=HEADER_BUFFER_BYTES),
        log_level=LogLevels(options.log_level if options.log_level != "warn" else "warning"),
        log_dictconfig=server_log_config(), log_access=False, respawn_failed_workers=True, respawn_interval=1.0,
        workers_kill_timeout=DRAIN_SECONDS,
        ssl_cert=Path(options.tls_cert) if options.tls_cert else None,
        ssl_key=Path(options.tls_key) if options.tls_key else None,
    )


def serve(options: ServerOptions, target: str = APP) -> None:
    """Run until SIGTERM/SIGINT. Prometheus multiprocess files live in one directory per master,
    emptied at start; a directory made here goes with the master, one the operator named stays."""
    check_bind(options)
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = given or tempfile.mkdtemp(prefix="tokenvault-metrics-")
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # before any worker imports prometheus_client
    os.environ["TOKENVAULT_WSGI_APP"] = target
    os.environ["TOKENVAULT_THREADS"] = str(options.threads)
    try:
        server(options).serve()
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    """`python -m api.http.server [TARGET]`: what `tokenvault serve` runs (TOKENVAULT_BIND, _WORKERS, _THREADS,
    _TLS_CERT, _TLS_KEY, _LOG_LEVEL); bench/ passes its hello-world app as TARGET to serve it the same way."""
    target = argv[0] if argv else APP
    settings = Settings.from_env()
    try:
        settings.check_serving()
    except ConfigurationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = ServerOptions.from_env(settings.env, bind=settings.bind, workers=settings.workers,
                                     log_level=settings.log_level)
    try:
        serve(options, target)
    except BindUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BIND
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
