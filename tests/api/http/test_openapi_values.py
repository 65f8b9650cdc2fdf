"""The OpenAPI document gives every value a shape: per kind in requests, per kind and view in detokenize answers.

A kind or a view added to the vault without its shape in api/http/openapi_values.py fails here, and so does a
shape that real answers do not fit (values of every kind in every view, made by the vault's own
vault.access.policy.apply_view, and answers of the app's detokenize endpoint).
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from flask.testing import FlaskClient

from api.http.openapi import document
from api.http.openapi_values import detokenized_name
from tests.conftest import auth
from vault.access.policy import SHOWN_VIEWS, Decision, Rule, apply_view, views_of
from vault.tokens.kinds import KINDS

PREFIX = "#/components/schemas/"
SAMPLES: dict[str, Any] = {
    "card": {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099, "holder": "Ada Lovelace"},
    "cvv": "123",
    "address": {"name": "Ada Lovelace", "line1": "1 Main Street", "city": "London", "postal_code": "N1 1AA",
                "country": "GB", "phone": "+442079460000", "use": "shipping"},
    "email": "ada@example.com",
    "phone": "+14155550100",
    "name": "Ada Lovelace",
    "text": "a note\nover two lines",
}
FIELDS = {"card": ("exp_month", "exp_year"), "address": ("city", "postal_code", "country")}


def schemas() -> dict[str, Any]:
    found: dict[str, Any] = document()["components"]["schemas"]
    return found


def validator(name: str) -> Any:
    """A validator for one component, its $refs resolved against the whole document's components."""
    return jsonschema_rs.validator_for({"$ref": PREFIX + name, "components": {"schemas": schemas()}})


def rule(kind: str, view: str) -> Decision:
    shown = "plain" if view == "fields" else view
    return Decision(Rule(operations=("detokenize",), kinds=(kind,), purposes=("legal",), view=shown,  # type: ignore[arg-type]
                         fields=FIELDS[kind] if view == "fields" else ()))


def test_every_kind_and_view_has_its_shape() -> None:
    found = schemas()
    by_kind = found["DetokenizedValue"]["discriminator"]["mapping"]
    assert set(by_kind) == set(KINDS)
    assert {"fields"} < set(SHOWN_VIEWS)
    for kind in KINDS:
        union = found[by_kind[kind].removeprefix(PREFIX)]
        by_view = union["discriminator"]["mapping"]
        assert union["discriminator"]["propertyName"] == "view"
        assert set(by_view) == set(views_of(kind)), kind
        assert [one["$ref"] for one in union["oneOf"]] == list(by_view.values())
        for view in views_of(kind):
            leaf = found[by_view[view].removeprefix(PREFIX)]
            assert leaf["properties"]["kind"]["const"] == kind and leaf["properties"]["view"]["const"] == view
            assert leaf["properties"]["value"], f"{kind}/{view} has no value shape (Any)"
            assert leaf["required"] == ["token", "kind", "view", "value"] and leaf["additionalProperties"] is False


def test_every_kind_has_its_request_shape() -> None:
    found = schemas()
    mapping = found["TokenizeBody"]["discriminator"]["mapping"]
    assert set(mapping) == set(KINDS)
    for kind, target in mapping.items():
        value = found[target.removeprefix(PREFIX)]["properties"]["value"]
        assert value and value != {"title": "Value"}, kind
    assert found["BatchBody"]["properties"]["items"]["items"] == {"$ref": PREFIX + "TokenizeBody"}
    corrected = found["CorrectBody"]["properties"]["value"]["anyOf"]
    assert {"$ref": PREFIX + "CardValue"} in corrected and {"$ref": PREFIX + "AddressValue"} in corrected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keep_bin", [False, True])
def test_values_of_every_view_fit_their_shape_and_no_other(kind: str, keep_bin: bool) -> None:
    items = {view: {"token": f"tok_{kind}", "kind": kind, "view": view,
                    "value": apply_view(kind, SAMPLES[kind], rule(kind, view), keep_bin=keep_bin)}
             for view in views_of(kind)}
    answer = validator("DetokenizeOut")
    for view, item in items.items():
        leaf = validator(detokenized_name(kind, view))
        errors = [error.message for error in leaf.iter_errors(item)]
        assert not errors, (kind, view, errors)
        assert answer.is_valid({"results": [item]}), (kind, view)  # exactly one branch of the unions
        for other in items:
            if other != view:
                assert not leaf.is_valid({**item, "view": other})
    assert not validator(detokenized_name(kind, "plain")).is_valid({**items["plain"], "value": {"x": 1}})


def test_detokenize_answers_fit_the_document(client: FlaskClient, api_keys: dict[str, str]) -> None:
    checkout = auth(api_keys["checkout"])
    tokens = {kind: client.post("/v1/tokens", json={"kind": kind, "value": SAMPLES[kind]},
                                headers=checkout).get_json()["token"] for kind in KINDS}
    answer = validator("DetokenizeOut")
    seen = set()
    for role, purpose, kinds in [("payment_gateway", "payment", ("card", "cvv")),
                                 ("shipping", "fulfillment", ("address", "card")),
                                 ("support", "support", ("card", "address", "email", "phone"))]:
        response = client.post("/v1/detokenize", json={"tokens": [tokens[k] for k in kinds], "purpose": purpose},
                               headers=auth(api_keys[role]))
        assert response.status_code == 200
        body = response.get_json()
        assert not [e.message for e in answer.iter_errors(body)], (role, body)
        seen |= {(r["kind"], r["view"]) for r in body["results"] if "value" in r}
    assert seen == {("card", "plain"), ("cvv", "plain"), ("address", "fields"), ("card", "masked"),
                    ("address", "masked"), ("email", "masked"), ("phone", "masked")}
