"""Helpers shared by the attack tests: sample secrets, leak scans, an app on a private SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask

from api.http.app import create_app
from api.wiring import Components
from tests.conftest import make_components
from tests.support import database

# Values an attacker or a careless client submits; none may ever come back in an error.
PAN = "4111111111111111"
PAN_SPACED = "4111 1111 1111 1111"
AMEX = "378282246310005"
EMAIL = "ada.lovelace@example.com"
HOLDER = "Ada Byron Lovelace"
CVV = "7391"
CARD = {"pan": PAN, "exp_month": 12, "exp_year": 2099}
ADDRESS = {"name": HOLDER, "line1": "12 St James's Square", "city": "London", "country": "GB", "use": "shipping"}

ALL_ROLES = ("checkout", "payment_gateway", "shipping", "support", "audit_export")  # API keys: machine roles
# Per-client rate limits (where this tree has them) high enough never to interfere with request counts.
# The fuzzers send thousands of requests from one address, many on purpose without credentials; the roles with
# built-in daily caps (support, shipping, marketing) need their own variable.
UNLIMITED = {"TOKENVAULT_RATE_LIMIT": "100000/second", "TOKENVAULT_DETOKENIZE_RATE_LIMIT": "100000/second",
             "TOKENVAULT_AUTH_FAILURE_RATE_LIMIT": "100000/second",
             **{f"TOKENVAULT_DETOKENIZE_RATE_LIMIT_{role}": "100000/second"
                for role in ("SUPPORT", "SHIPPING", "MARKETING")}}


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings_in(item)


def values_in(value: Any) -> Iterator[str]:
    """Every string value in a JSON-like value (keys left out: field names may be named back)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from values_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from values_in(item)


def windows(text: str, size: int) -> Iterator[str]:
    """Each substring of `text` of length `size` (the whole text if shorter is skipped)."""
    for start in range(len(text) - size + 1):
        yield text[start:start + size]


def echoed(submitted: Iterable[str], answer: str, size: int = 8, allowed: Iterable[str] = ()) -> list[str]:
    """Pieces of at least `size` characters of the submitted strings found in `answer`.

    `allowed` are fixed words the service may say on its own (field names, enum values):
    they are blanked out of the answer first so a submitted string that merely contains
    one is not taken for an echo.
    """
    for word in sorted(set(allowed), key=len, reverse=True):
        if len(word) >= size:
            answer = answer.replace(word, "\x00")
    found = []
    for text in submitted:
        for piece in windows(text, size):
            if piece in answer:
                found.append(text)
                break
    return found


def encodings_of(value: str) -> list[bytes]:
    """The ways a value may sit in a file: UTF-8, UTF-16 (both orders), hex of UTF-8 (both cases)."""
    raw = value.encode("utf-8")
    return [raw, value.encode("utf-16-le"), value.encode("utf-16-be"), raw.hex().encode(), raw.hex().upper().encode()]


def leaks(blob: bytes, secrets: Iterable[str]) -> list[str]:
    """The secrets found in `blob` in any of their encodings."""
    return [value for value in secrets if any(form in blob for form in encodings_of(value))]


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def sqlite_app(directory: Path, template: Path, **extra: str) -> tuple[Components, Flask]:
    """Components and the Flask app on a private copy of the migrated SQLite template."""
    directory.mkdir(parents=True, exist_ok=True)
    url = database.sqlite_copy(template, directory)
    parts = make_components(directory / "data", url, **extra)
    return parts, create_app(parts=parts)


def api_keys_for(parts: Components, roles: Iterable[str] = ALL_ROLES) -> dict[str, str]:
    return {role: parts.clients.create(f"attack-{role}", role)[1].expose() for role in roles}
