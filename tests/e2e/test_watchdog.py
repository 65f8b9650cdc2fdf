"""The per-request watchdog under the real server (granian, one worker, one thread; issue #18).

A request stuck inside the app is answered 503 after TOKENVAULT_REQUEST_SECONDS and a spare thread
serves the next one; when the spare hangs too the worker exits after answering, and granian starts
a fresh worker that answers at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def hang_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "TOKENVAULT_DATA_DIR": str(tmp_path / "var"), "TOKENVAULT_BIND": f"127.0.0.1:{port}",
           "TOKENVAULT_WORKERS": "1", "TOKENVAULT_THREADS": "1", "TOKENVAULT_REQUEST_SECONDS": "1",
           "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "api.http.server", "tests.support.hang_app:app"], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/ok", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_hung_request_answers_503_and_a_hung_worker_is_replaced(hang_server: str) -> None:
    first = requests.get(hang_server + "/ok", timeout=5).text
    started = time.monotonic()
    hung = requests.get(hang_server + "/hang", timeout=10)
    took = time.monotonic() - started
    assert (hung.status_code, hung.headers.get("retry-after")) == (503, "1") and took < 3, took
    assert requests.get(hang_server + "/ok", timeout=5).text == first  # a spare thread, same worker
    assert requests.get(hang_server + "/hang", timeout=10).status_code == 503  # the spare hangs too
    started = time.monotonic()
    while True:
        try:
            answer = requests.get(hang_server + "/ok", timeout=2)
            if answer.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() - started < 15, "no fresh worker"
        time.sleep(0.05)
    assert answer.text != first  # a fresh worker process
    print(f"hung request answered 503 after {took:.2f} s; fresh worker answering "
          f"{time.monotonic() - started:.2f} s after the second hang")
