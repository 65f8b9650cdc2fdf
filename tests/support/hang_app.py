"""A WSGI app whose /hang never returns, served by the real server in tests/e2e/test_watchdog.py."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/hang":
        threading.Event().wait(3600)  # stuck inside the app: a lock never released, a peer that never answers
    start_response("200 OK", [("content-type", "text/plain")])
    return [str(os.getpid()).encode()]  # which worker process answered
