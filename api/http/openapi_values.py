"""The value shapes of the OpenAPI document: what `value` holds per token kind, and per view when detokenized.

Request values are the kinds' own pydantic shapes (vault.tokens.kinds.VALUE_SCHEMAS). A detokenized value's
shape depends on its kind and on the view the caller's policy rule gives (vault.access.policy.shown_view):
each answer carries both, and the document has one schema per (kind, view), chosen by a discriminator on
`kind` and then on `view`, so a generated client gets a typed value instead of `Any`. The masked shapes
describe what vault.access.policy.mask returns; tests/api/http/test_openapi_values.py checks real answers of
every kind and view against them.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, TypeAdapter

from vault.access.policy import views_of
from vault.tokens.kinds import KINDS, VALUE_SCHEMAS

__all__ = ["value_schemas", "detokenized_name"]

_PREFIX = "#/components/schemas/"
REDACTED: dict[str, Any] = {"type": "string", "const": "[redacted]",
                            "description": "The value is withheld (view `redacted`)"}
_MONTH = {"type": "integer", "minimum": 1, "maximum": 12}
_YEAR = {"type": "integer", "minimum": 2000, "maximum": 2100}
_MASKED: dict[str, dict[str, Any]] = {
    "card": {"type": "object", "title": "MaskedCard", "additionalProperties": False,
             "required": ["pan", "exp_month", "exp_year"],
             "description": "Last four digits (and the BIN if the policy keeps it); no holder",
             "properties": {"pan": {"type": "string", "pattern": r"^([0-9]{6})?\*+[0-9]{4}$"},
                            "exp_month": _MONTH, "exp_year": _YEAR}},
    "address": {"type": "object", "title": "MaskedAddress", "additionalProperties": False,
                "required": ["city", "country", "use"], "description": "City, country and use only",
                "properties": {"city": {"type": "string"}, "country": {"type": "string", "pattern": "^[A-Z]{2}$"},
                               "use": {"type": "string", "enum": ["shipping", "billing"]}}},
    "email": {"type": "string", "pattern": r"^[^@]?\*{3}@", "description": "First character and domain"},
    "phone": {"type": "string", "pattern": r"^\*+[0-9]{2}$", "description": "Last two digits"},
    "name": {"type": "string", "pattern": r"^.?\*{3}$", "description": "First character"},
    "cvv": {"type": "string", "const": "***"},
    "text": {"type": "string", "const": "***"},
}


def detokenized_name(kind: str, view: str | None = None) -> str:
    """`DetokenizedCard` (a kind's union of views) or `DetokenizedCardMasked` (one kind and view)."""
    return f"Detokenized{kind.capitalize()}{(view or '').capitalize()}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _PREFIX + name}


def _plain(kind: str) -> dict[str, Any]:
    shape = VALUE_SCHEMAS[kind]
    if isinstance(shape, type) and issubclass(shape, BaseModel):
        return _ref(shape.__name__)  # CardValue, AddressValue: already components (the tokenize bodies)
    found: dict[str, Any] = TypeAdapter(shape).json_schema()
    return found


def _fields(kind: str, schemas: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The plain shape with every field optional: the policy rule names which ones are sent."""
    plain = schemas[VALUE_SCHEMAS[kind].__name__]
    name = f"{kind.capitalize()}Fields"
    shape = {**copy.deepcopy({k: v for k, v in plain.items() if k != "required"}), "title": name,
             "description": "Only the fields the caller's policy rule grants (`fields`), each as in the plain view"}
    return name, shape


def _value(kind: str, view: str, schemas: dict[str, Any]) -> dict[str, Any]:
    if view == "plain":
        return _plain(kind)
    if view == "fields":
        name, shape = _fields(kind, schemas)
        schemas[name] = shape
        return _ref(name)
    if view == "masked":
        masked = _MASKED[kind]
        if masked.get("type") == "object":
            schemas[masked["title"]] = masked
            return _ref(masked["title"])
        return masked
    return REDACTED


def value_schemas(schemas: dict[str, Any]) -> None:
    """Add to `schemas` (components) one schema per (kind, view), one union per kind (on `view`) and
    `DetokenizedValue` (on `kind`)."""
    by_kind: dict[str, str] = {}
    for kind in KINDS:
        by_view: dict[str, str] = {}
        for view in views_of(kind):
            name = detokenized_name(kind, view)
            schemas[name] = {
                "type": "object", "title": name, "additionalProperties": False,
                "required": ["token", "kind", "view", "value"],
                "properties": {"token": {"type": "string"}, "kind": {"type": "string", "const": kind},
                               "view": {"type": "string", "const": view},
                               "value": _value(kind, view, schemas)},
            }
            by_view[view] = _PREFIX + name
        union = detokenized_name(kind)
        schemas[union] = {"oneOf": [{"$ref": target} for target in by_view.values()],
                          "discriminator": {"propertyName": "view", "mapping": by_view}}
        by_kind[kind] = _PREFIX + union
    schemas["DetokenizedValue"] = {
        "oneOf": [{"$ref": target} for target in by_kind.values()],
        "discriminator": {"propertyName": "kind", "mapping": by_kind},
        "description": "A value the caller may read: its kind and the view its policy rule gives (plain, fields, "
                       "masked or redacted) name its shape",
    }
    schemas["DetokenizeOut"]["properties"]["results"]["items"] = {
        "oneOf": [_ref("DetokenizedValue"), _ref("DetokenizedError")]}
    # A correction's value has the shape of the token's kind (the token names it; a cvv cannot be corrected).
    schemas["CorrectBody"]["properties"]["value"] = {
        "anyOf": [_plain("card"), _plain("address"),
                  {"type": "string", "description": "An email, phone, name or text, as when tokenized"}],
        "description": "The new value, shaped as the token's kind (a card keeps its number)"}
    schemas["BatchBody"]["properties"]["items"]["items"] = _ref("TokenizeBody")
