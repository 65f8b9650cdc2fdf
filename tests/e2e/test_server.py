"""End to end: the real server (granian, api/http/server.py), over HTTP, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.server import Server, running_server

PANS = ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117"]
EMAIL = "leaky.person@example.org"
STREET = "17 Unforgettable Lane"
METRICS_TOKEN = "e2e-metrics-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("e2e") / "var", TOKENVAULT_LOG_LEVEL="debug",
                        TOKENVAULT_METRICS_TOKEN=METRICS_TOKEN) as started:
        yield started


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_tokenize_and_detokenize_over_http(server: Server) -> None:
    checkout, gateway = server.client_key("checkout"), server.client_key("payment_gateway")
    created = requests.post(server.url + "/v1/tokens", headers=bearer(checkout), timeout=10,
                            json={"kind": "card", "value": {"pan": PANS[0], "exp_month": 1, "exp_year": 2099}})
    assert created.status_code == 201
    token = created.json()["token"]
    assert token != PANS[0] and token.endswith("1111")
    read = requests.post(server.url + "/v1/detokenize", headers=bearer(gateway), timeout=10,
                         json={"tokens": [token], "purpose": "payment"})
    assert read.status_code == 200
    assert read.json()["results"][0]["value"]["pan"] == PANS[0]
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert "paths" in requests.get(server.url + "/openapi.json", timeout=5).json()
    # Both workers' counts add up in multiprocess mode.
    for _ in range(6):
        requests.get(server.url + "/healthz", timeout=5)
    assert requests.get(server.url + "/metrics", timeout=5).status_code == 401
    metrics = requests.get(server.url + "/metrics", headers=bearer(METRICS_TOKEN), timeout=5).text
    line = next(m for m in metrics.splitlines()
                if m.startswith('tokenvault_http_requests_total{method="GET",route="/healthz",status="200"}'))
    assert float(line.split()[-1]) >= 7


def test_no_plaintext_in_database_or_logs(server: Server) -> None:
    """Run a flow with known values, then scan every file the service wrote."""
    checkout, gateway = server.client_key("checkout"), server.client_key("payment_gateway")
    shipping = server.client_key("shipping")
    items = [{"kind": "card", "value": {"pan": pan, "exp_month": 5, "exp_year": 2099}, "subject_id": "cust-1"}
             for pan in PANS]
    items += [{"kind": "email", "value": EMAIL, "deterministic": True},
              {"kind": "cvv", "value": "8731"},
              {"kind": "address", "value": {"name": "Xavier Leak", "line1": STREET, "city": "Leaksville",
                                            "country": "US", "use": "shipping"}}]
    batch = requests.post(server.url + "/v1/tokens/batch", headers=bearer(checkout), json={"items": items},
                          timeout=10)
    tokens = [r["token"] for r in batch.json()["results"]]
    requests.post(server.url + "/v1/detokenize", headers=bearer(gateway), timeout=10,
                  json={"tokens": tokens, "purpose": "payment"})
    requests.post(server.url + "/v1/detokenize", headers=bearer(shipping), timeout=10,
                  json={"tokens": tokens[-1:], "purpose": "fulfillment"})
    # Mistakes a client might make: a PAN where a token goes, in a path and in a body.
    requests.get(server.url + f"/v1/tokens/{PANS[1]}", headers=bearer(checkout), timeout=10)
    requests.post(server.url + "/v1/detokenize", headers=bearer(gateway), timeout=10,
                  json={"tokens": [PANS[2]], "purpose": "payment"})
    requests.post(server.url + "/v1/tokens", headers=bearer(checkout), timeout=10,
                  json={"kind": "card", "value": {"pan": PANS[3][:-1] + "0", "exp_month": 5, "exp_year": 2099}})
    data_dir = Path(server.env["TOKENVAULT_DATA_DIR"])
    files = [p for p in data_dir.rglob("*") if p.is_file()] + [server.log]
    needles = [*PANS, PANS[3][:-1] + "0", EMAIL, STREET, "Xavier Leak", '"8731"']
    hits = []
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            for encoded in {needle.encode(), needle.encode("utf-16-le")}:
                if encoded in content:
                    hits.append((path.name, needle))
    assert server.log.stat().st_size > 0
    assert hits == []


def test_a_stopped_server_leaves_no_metrics_directory_behind(tmp_path: Path) -> None:
    """api/http/server.py makes a Prometheus directory when none is named; the master removes it at exit."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with running_server(tmp_path / "var", TMPDIR=str(scratch), TOKENVAULT_METRICS_PUBLIC="1") as server:
        assert requests.get(server.url + "/metrics", timeout=10).status_code == 200
        assert [p.name for p in scratch.iterdir() if p.name.startswith("tokenvault-metrics-")]
    assert server.process.returncode == 0
    assert [p.name for p in scratch.iterdir() if p.name.startswith("tokenvault-metrics-")] == []
