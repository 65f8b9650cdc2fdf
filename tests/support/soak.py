"""Mixed traffic at a fixed fraction of measured capacity, for the soak test and bench/soak.py."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

CARDS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]


@dataclass
class SoakResult:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    capacity: float = 0.0
    rate: float = 0.0
    rss_start_kb: int = 0
    rss_end_kb: int = 0


def worker_rss_kb(master_pid: int) -> int:
    """Resident memory of gunicorn's workers (children of the master), in KiB."""
    total = 0
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text().split()
            if int(stat[3]) != master_pid:
                continue
            for line in (child / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


class Mix:
    """One request of the mix: 50 % tokenize, 40 % detokenize, 10 % metadata."""

    def __init__(self, url: str, checkout: str, gateway: str, seed: int) -> None:
        self.url = url
        self.session = requests.Session()
        self.checkout = {"Authorization": f"Bearer {checkout}"}
        self.gateway = {"Authorization": f"Bearer {gateway}"}
        self.random = random.Random(seed)
        self.tokens: list[str] = []

    def one(self) -> str | None:
        """Make one request; an error description, or None when it went as expected."""
        roll = self.random.random()
        if roll < 0.5 or not self.tokens:
            answer = self.session.post(self.url + "/v1/tokens", headers=self.checkout, timeout=30, json={
                "kind": "card", "value": {"pan": self.random.choice(CARDS), "exp_month": 3, "exp_year": 2099},
                "subject_id": f"soak-{self.random.randrange(500)}"})
            if answer.status_code != 201:
                return f"tokenize {answer.status_code}"
            self.tokens.append(answer.json()["token"])
            self.tokens = self.tokens[-200:]
            return None
        token = self.random.choice(self.tokens)
        if roll < 0.9:
            answer = self.session.post(self.url + "/v1/detokenize", headers=self.gateway, timeout=30,
                                       json={"tokens": [token], "purpose": "payment"})
            ok = answer.status_code == 200 and "value" in answer.json()["results"][0]
            return None if ok else f"detokenize {answer.status_code}"
        answer = self.session.get(self.url + f"/v1/tokens/{token}", headers=self.checkout, timeout=30)
        return None if answer.status_code == 200 else f"metadata {answer.status_code}"


def soak(url: str, checkout: str, gateway: str, master_pid: int, *, seconds: float, fraction: float = 0.7,
         clients: int = 8, probe_seconds: float = 5.0) -> SoakResult:
    """Measure capacity with a closed loop, then hold `fraction` of it, paced, for `seconds`."""
    result = SoakResult()
    lock = threading.Lock()

    def run(duration: float, per_client_rate: float | None, seed: int) -> None:
        mix = Mix(url, checkout, gateway, seed)
        deadline = time.monotonic() + duration
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            error = mix.one()
            with lock:
                result.requests += 1
                if error:
                    result.errors.append(error)
            if per_client_rate:
                next_at += 1.0 / per_client_rate
                time.sleep(max(0.0, next_at - time.monotonic()))

    def phase(duration: float, per_client_rate: float | None) -> float:
        before = result.requests
        started = time.monotonic()
        threads = [threading.Thread(target=run, args=(duration, per_client_rate, i)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return (result.requests - before) / (time.monotonic() - started)

    result.capacity = phase(probe_seconds, None)
    result.rss_start_kb = worker_rss_kb(master_pid)
    result.rate = phase(seconds, result.capacity * fraction / clients)
    result.rss_end_kb = worker_rss_kb(master_pid)
    return result
