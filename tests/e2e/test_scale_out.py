"""Two `tokenvault serve` instances sharing one PostgreSQL, and graceful shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
import requests

from tests.support.database import postgres_database
from tests.support.server import Server, running_server

CARD = {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    base = tmp_path_factory.mktemp("scale")
    policy = base / "policy.toml"
    # keep_bin leaves 6 random digits in a 16-digit card token: collisions are certain at this volume.
    policy.write_text(resources.files("vault.access").joinpath("policy.toml").read_text()
                      .replace("keep_bin = false", "keep_bin = true"))
    with postgres_database() as url:
        env = {"TOKENVAULT_DATABASE_URL": url, "TOKENVAULT_POLICY": str(policy)}
        with running_server(base / "var", **env) as first, running_server(base / "var", **env) as second:
            yield first, second


def post(server: Server, key: str, path: str, body: dict[str, object]) -> requests.Response:
    return requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_deterministic_tokenization_from_both_instances_yields_one_token(pair: tuple[Server, Server]) -> None:
    key = pair[0].client_key("checkout")
    body = {"kind": "card", "value": CARD, "deterministic": True, "subject_id": "both"}
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def call(server: Server) -> None:
        barrier.wait()
        tokens.append(post(server, key, "/v1/tokens", body).json()["token"])

    threads = [threading.Thread(target=call, args=(pair[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 8 and len(set(tokens)) == 1


def test_card_tokens_stay_unique_under_collision_pressure(pair: tuple[Server, Server]) -> None:
    first, second = pair
    assert first.url != second.url
    checkout, gateway = first.client_key("checkout"), second.client_key("payment_gateway")
    results: dict[str, list[str]] = {}

    def batch(server: Server, name: str) -> None:
        found = []
        for _ in range(2):
            answer = post(server, checkout, "/v1/tokens/batch", {"items": [{"kind": "card", "value": CARD}] * 1000})
            found += [r["token"] for r in answer.json()["results"]]
        results[name] = found

    threads = [threading.Thread(target=batch, args=(server, name)) for server, name in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = results["a"] + results["b"]
    assert len(everything) == 4000 and len(set(everything)) == 4000
    assert all(t.startswith("411111") and t.endswith("1111") for t in everything)
    read = post(second, gateway, "/v1/detokenize", {"tokens": everything[:1000], "purpose": "payment"}).json()
    assert {r["value"]["pan"] for r in read["results"]} == {CARD["pan"]}


def test_purge_runs_safely_on_both_at_once(pair: tuple[Server, Server]) -> None:
    runs = [subprocess.Popen([str(Path(sys.executable).with_name("tokenvault")), "purge"], env=s.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in pair]
    assert [run.wait(timeout=60) for run in runs] == [0, 0]


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    with running_server(tmp_path / "var") as server:
        key = server.client_key("checkout")
        answers: list[int] = []

        def slow_batch() -> None:
            items = [{"kind": "address", "value": {"name": "N", "line1": "L", "city": "C", "country": "FR",
                                                    "use": "shipping"}}] * 1000
            answers.append(post(server, key, "/v1/tokens/batch", {"items": items}).status_code)

        thread = threading.Thread(target=slow_batch)
        thread.start()
        time.sleep(0.15)  # the batch is in flight
        os.killpg(server.process.pid, signal.SIGTERM)
        thread.join(timeout=60)
        assert answers == [200]
        assert server.process.wait(timeout=30) == 0
