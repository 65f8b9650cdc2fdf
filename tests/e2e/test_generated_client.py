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

    batch = models.BatchBody(items=[models.TokenizeEmail(kind="email", value="gen@example.com"),
                                    models.TokenizeCvv(kind="cvv", value="123")])
    tokens = module(f"{api}.tokenize_batch").sync_detailed(client=checkout, body=batch)
    assert tokens.status_code == HTTPStatus.OK and len(tokens.parsed.results) == 2
    email_token, cvv_token = (result.token for result in tokens.parsed.results)

    read = module(f"{api}.detokenize").sync_detailed(client=gateway, body=models.DetokenizeBody.from_dict(
        {"tokens": [token, cvv_token], "purpose": "payment"}))
    assert read.status_code == HTTPStatus.OK
    card_read, cvv_read = read.parsed.results
    # Typed by kind and view (the document's discriminators), not a dict of Any.
    assert isinstance(card_read, models.DetokenizedCardPlain) and isinstance(card_read.value, models.CardValue)
    assert card_read.value.pan == PAN and card_read.value.exp_year == 2099
    assert isinstance(cvv_read, models.DetokenizedCvvPlain) and cvv_read.value == "123"

    support = client(generated, server, "support")
    masked = module(f"{api}.detokenize").sync_detailed(client=support, body=models.DetokenizeBody.from_dict(
        {"tokens": [token, email_token], "purpose": "support"}))
    assert masked.status_code == HTTPStatus.OK
    card_masked, email_masked = masked.parsed.results
    assert isinstance(card_masked, models.DetokenizedCardMasked) and isinstance(card_masked.value, models.MaskedCard)
    assert card_masked.value.pan.endswith("1111") and PAN not in card_masked.value.pan
    assert isinstance(email_masked, models.DetokenizedEmailMasked) and email_masked.value == "g***@example.com"

    meta = module(f"{api}.read_metadata").sync_detailed(token, client=checkout)
    assert meta.status_code == HTTPStatus.OK and meta.parsed.kind == "card"

    corrected = module(f"{api}.correct_token").sync_detailed(token, client=officer, x_totp=step_up,
                                                             body=models.CorrectBody(value=models.CardValue(
                                                                 pan=PAN, exp_month=11, exp_year=2099)))
    assert corrected.status_code == HTTPStatus.OK, corrected.content

    deleted = module(f"{api}.delete_token").sync_detailed(token, client=checkout)
    assert deleted.status_code == HTTPStatus.NO_CONTENT
    gone = module(f"{api}.read_metadata").sync_detailed(token, client=checkout)
    assert gone.status_code == HTTPStatus.NOT_FOUND and gone.parsed.error.code == "not_found"


def test_every_generated_value_is_typed(generated: Any) -> None:
    """Each model with a `value` holds a typed class, a union of them or a string: never `Any`."""
    models = module("models")
    with_value = {name: cls.__annotations__["value"] for name in dir(models)
                  if hasattr(cls := getattr(models, name), "__attrs_attrs__") and "value" in cls.__annotations__}
    assert len(with_value) >= 7 + 23 + 1  # tokenize per kind, detokenized per kind and view, correct
    assert {name: hint for name, hint in with_value.items() if "Any" in str(hint)} == {}
    assert "DetokenizedValue" not in with_value  # the union is of the per-view classes, not a class of its own
    batch = models.BatchBody.__annotations__["items"]
    assert "TokenizeCard" in str(batch) and "Any" not in str(batch)


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
