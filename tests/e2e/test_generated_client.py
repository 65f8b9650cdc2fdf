"""The OpenAPI document is the contract: a client generated from it by a third-party generator
(openapi-python-client, pinned in the test extra) drives every token endpoint of the real server (issue #18).

The client is generated during the test from the document the server serves, with
`raise_on_unexpected_status=True`, so an answer the document does not list (a 413 or 415, say) fails here.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.server import Server, running_server

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "tokenvault_generated_client"
PAN = "4111111111111111"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("generated") / "var") as started:
        yield started


@pytest.fixture(scope="module")
def generated(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("client")
    (work / "openapi.json").write_bytes(requests.get(server.url + "/openapi.json", timeout=10).content)
    done = subprocess.run([str(GENERATOR), "generate", "--path", "openapi.json", "--output-path", PACKAGE,
                           "--meta", "none"], cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(work))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(work))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def client(generated: Any, server: Server, role: str) -> Any:
    return generated.AuthenticatedClient(base_url=server.url, token=server.client_key(role),
                                         raise_on_unexpected_status=True)


def test_every_token_endpoint_through_the_generated_client(generated: Any, server: Server) -> None:
    models, api = module("models"), "api.default"
    checkout, gateway = client(generated, server, "checkout"), client(generated, server, "payment_gateway")
    session, step_up = server.operator_session_with_step_up("privacy_officer", "officer-generated")
    officer = generated.AuthenticatedClient(base_url=server.url, raise_on_unexpected_status=True, token=session)

    card = models.TokenizeCard.from_dict({"kind": "card", "subject_id": "cust-gen",
                                          "value": {"pan": PAN, "exp_month": 12, "exp_year": 2099}})
    created = module(f"{api}.tokenize").sync_detailed(client=checkout, body=card)
    assert created.status_code == HTTPStatus.CREATED
    token = created.parsed.token
    assert token != PAN and token.endswith("1111")

    batch = models.BatchBody.from_dict({"items": [{"kind": "email", "value": "gen@example.com"},
                                                  {"kind": "cvv", "value": "123"}]})
    tokens = module(f"{api}.tokenize_batch").sync_detailed(client=checkout, body=batch)
    assert tokens.status_code == HTTPStatus.OK and len(tokens.parsed.results) == 2

    read = module(f"{api}.detokenize").sync_detailed(client=gateway, body=models.DetokenizeBody.from_dict(
        {"tokens": [token], "purpose": "payment"}))
    assert read.status_code == HTTPStatus.OK
    assert read.parsed.results[0].to_dict()["value"]["pan"] == PAN

    meta = module(f"{api}.read_metadata").sync_detailed(token, client=checkout)
    assert meta.status_code == HTTPStatus.OK and meta.parsed.kind == "card"

    corrected = module(f"{api}.correct_token").sync_detailed(token, client=officer, x_totp=step_up,
                                                             body=models.CorrectBody.from_dict(
        {"value": {"pan": PAN, "exp_month": 11, "exp_year": 2099}}))
    assert corrected.status_code == HTTPStatus.OK, corrected.content

    deleted = module(f"{api}.delete_token").sync_detailed(token, client=checkout)
    assert deleted.status_code == HTTPStatus.NO_CONTENT
    gone = module(f"{api}.read_metadata").sync_detailed(token, client=checkout)
    assert gone.status_code == HTTPStatus.NOT_FOUND and gone.parsed.error.code == "not_found"


def test_documented_refusals_parse_as_errors(generated: Any, server: Server) -> None:
    models, api = module("models"), "api.default"
    checkout = client(generated, server, "checkout")
    huge = models.TokenizeText.from_dict({"kind": "text", "value": "x" * (6 * 1024 * 1024)})
    too_big = module(f"{api}.tokenize").sync_detailed(client=checkout, body=huge)
    assert too_big.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert too_big.parsed.error.code == "payload_too_large"
    long_ttl = models.TokenizeCvv.from_dict({"kind": "cvv", "value": "123", "ttl_seconds": 3601})
    refused = module(f"{api}.tokenize").sync_detailed(client=checkout, body=long_ttl)
    assert refused.status_code == HTTPStatus.UNPROCESSABLE_ENTITY and refused.parsed.error.field == "ttl_seconds"
    anonymous = generated.Client(base_url=server.url, raise_on_unexpected_status=True)
    denied = module(f"{api}.read_metadata").sync_detailed("tok_text_x", client=anonymous)
    assert denied.status_code == HTTPStatus.UNAUTHORIZED
