"""/metrics in Prometheus format, without tokens or values in any label."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from api.http.app import create_app
from tests.conftest import auth, make_components


def test_metrics_count_requests_operations_and_kms(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_METRICS_TOKEN="s3cret-metrics")
    client = create_app(parts=parts).test_client()
    api_keys = {role: parts.clients.create(f"test-{role}", role)[1].expose()
                for role in ("checkout", "payment_gateway")}
    made = client.post("/v1/tokens", json={"kind": "card", "value": {"pan": "4111111111111111", "exp_month": 1,
                                                                     "exp_year": 2099}},
                       headers=auth(api_keys["checkout"])).get_json()
    client.post("/v1/detokenize", json={"tokens": [made["token"]], "purpose": "payment"},
                headers=auth(api_keys["payment_gateway"]))
    text = client.get("/metrics", headers=auth("s3cret-metrics")).get_data(as_text=True)
    assert 'tokenvault_http_requests_total{method="POST",route="/v1/tokens",status="201"}' in text
    assert 'tokenvault_operations_total{kind="card",operation="detokenize",outcome="allowed",role="payment_gateway"}' \
        in text
    assert "tokenvault_kms_calls_total" in text and "tokenvault_audit_write_seconds_bucket" in text
    assert "tokenvault_key_cache_lookups_total" in text
    assert made["token"] not in text and "4111111111111111" not in text


def test_metrics_need_a_token_by_default(client: FlaskClient) -> None:
    answer = client.get("/metrics")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_metrics_open_only_when_made_public(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_METRICS_PUBLIC="1")
    assert create_app(parts=parts).test_client().get("/metrics").status_code == 200


def test_metrics_token_when_configured(tmp_path: Path, sqlite_url: str) -> None:
    parts = make_components(tmp_path / "data", sqlite_url, TOKENVAULT_METRICS_TOKEN="s3cret-metrics")
    client = create_app(parts=parts).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics"}).status_code == 200


def test_a_batch_counts_every_item_by_kind_and_outcome(client: FlaskClient, api_keys: dict[str, str]) -> None:
    def count(outcome: str, kind: str) -> float:
        labels = {"operation": "tokenize", "kind": kind, "role": "checkout", "outcome": outcome}
        return REGISTRY.get_sample_value("tokenvault_operations_total", labels) or 0.0

    before = count("allowed", "email"), count("invalid_input", "unknown")
    items = [{"kind": "email", "value": f"buyer{i}@example.com"} for i in range(3)]
    items.append({"kind": "email", "value": "not an email"})
    answer = client.post("/v1/tokens/batch", json={"items": items}, headers=auth(api_keys["checkout"]))
    assert answer.status_code == 200
    assert (count("allowed", "email") - before[0], count("invalid_input", "unknown") - before[1]) == (3.0, 1.0)
