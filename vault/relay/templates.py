"""Templates: where a caller asks the vault to put a value, and filling them in safely.

A template is `{{tokenvault:<token>:<field>}}`, e.g. `{{tokenvault:7391530268171111:pan}}` or
`{{tokenvault:tok_address_...:line1}}`. The `tokenvault:` prefix cannot be mistaken for a
partner's own content (Handlebars, Mustache or Jinja text keeps its meaning), and any text that
starts a template but does not complete one is refused rather than sent as is.

Filling is one pass over the caller's content, never over the values: a value that itself looks
like a template (a name of `{{tokenvault:...}}`) is data, not a second template. Escaping belongs
to the context: JSON strings are filled in the parsed document and serialised again, form fields
are filled after decoding and encoded again, header values refuse CR, LF and other control
characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from vault.errors import ValidationFailed

__all__ = ["Template", "FIELDS", "find", "fill_text", "fill_json", "fill_form", "fill_header", "MARKER",
           "parse_json", "parse_form", "value_field", "find_json", "find_form"]

MARKER = "{{tokenvault:"
_TEMPLATE = re.compile(r"\{\{tokenvault:([A-Za-z0-9_-]{1,128}):([a-z0-9_.]{1,32})\}\}")
_HEADER_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# The fields each kind offers; a structured value's field must be one of these.
FIELDS: dict[str, tuple[str, ...]] = {
    "card": ("pan", "exp_month", "exp_month2", "exp_year", "exp_year2", "holder"),
    "cvv": ("cvv",),
    "address": ("address.name", "address.line1", "address.line2", "address.city", "address.region",
                "address.postal_code", "address.country", "address.phone"),
    "email": ("value",), "phone": ("value",), "name": ("value",), "text": ("value",),
}


@dataclass(frozen=True)
class Template:
    token: str
    field: str
    location: str  # body | header


def find(text: str, location: str) -> list[Template]:
    """Every template in `text`; ValidationFailed if something starts like one but is not."""
    found = [Template(m.group(1), m.group(2), location) for m in _TEMPLATE.finditer(text)]
    if text.count(MARKER) != len(found) or text.lower().count(MARKER) != len(found):
        raise ValidationFailed(location, "has a malformed {{tokenvault:...}} template")
    return found


def fill_text(text: str, values: dict[tuple[str, str], str]) -> str:
    """One pass: each template replaced by its value; values are never scanned again."""
    return _TEMPLATE.sub(lambda m: values[(m.group(1), m.group(2))], text)


def value_field(kind: str, value: Any, field: str) -> str:
    """The text of `field` of a detokenized value; ValidationFailed when the kind has no such field."""
    if field not in FIELDS.get(kind, ()):
        raise ValidationFailed("template", f"{kind} tokens offer {', '.join(FIELDS.get(kind, ()))}")
    if kind == "card" and isinstance(value, dict):
        if field in ("exp_month2", "exp_year2"):
            number = value.get(field[:-1])
            found: Any = None if number is None else f"{int(number) % 100:02d}"
        else:
            found = value.get(field)
    elif kind == "address" and isinstance(value, dict):
        found = value.get(field.removeprefix("address."))
    else:
        found = value
    if found is None or isinstance(found, dict | list):
        raise ValidationFailed("template", "the value has no such field for this caller")
    return str(found)


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ValidationFailed("body", "is not valid JSON") from None


def _walk(document: Any, on_string: Callable[[str], str]) -> Any:
    if isinstance(document, str):
        return on_string(document)
    if isinstance(document, list):
        return [_walk(item, on_string) for item in document]
    if isinstance(document, dict):
        out = {}
        for key, item in document.items():
            if MARKER in key.lower():
                raise ValidationFailed("body", "templates may only stand in values, not in keys")
            out[key] = _walk(item, on_string)
        return out
    return document


def find_json(document: Any) -> list[Template]:
    found: list[Template] = []

    def collect(text: str) -> str:
        found.extend(find(text, "body"))
        return text

    _walk(document, collect)
    return found


def fill_json(document: Any, values: dict[tuple[str, str], str]) -> bytes:
    filled = _walk(document, lambda text: fill_text(text, values))
    return json.dumps(filled, ensure_ascii=False, separators=(",", ":")).encode()


def parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                         max_num_fields=1000)
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed("body", "is not a valid form") from None


def find_form(fields: list[tuple[str, str]]) -> list[Template]:
    found: list[Template] = []
    for name, value in fields:
        if MARKER in name.lower():
            raise ValidationFailed("body", "templates may only stand in values, not in names")
        found.extend(find(value, "body"))
    return found


def fill_form(fields: list[tuple[str, str]], values: dict[tuple[str, str], str]) -> bytes:
    return urlencode([(name, fill_text(value, values)) for name, value in fields]).encode()


def fill_header(name: str, value: str, values: dict[tuple[str, str], str]) -> str:
    filled = fill_text(value, values)
    if _HEADER_UNSAFE.search(filled) or not filled.isascii():
        raise ValidationFailed(f"header.{name}", "would carry control or non-ASCII characters")
    return filled
