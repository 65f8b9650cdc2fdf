"""Response protection: what a partner's answer may not carry back to the caller.

A route names response fields (dotted JSON paths; `*` crosses every item of a list) that carry
card or personal data: each is tokenized or redacted. Then the PAN detector scans whatever is
left, in every content type: any run of 12 to 19 digits (spaces or dashes between them allowed)
that passes the Luhn check is replaced by a masked form keeping only the last four digits. A
bare PAN has no expiry, so it cannot become a card token; it is masked instead.

Also the small PAN detector of the relay (see issue #19 for the shared one): to be consolidated
once that lands.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from vault.tokens.cards import luhn_valid

__all__ = ["find_pans", "mask_pans", "protect_fields", "REDACTED"]

REDACTED = "[redacted]"
# Digits with optional single space/dash separators; lookarounds keep it from starting mid-number.
_CANDIDATE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){11,18}[0-9](?![0-9])")


def _pans(text: str) -> list[tuple[int, int, str]]:
    found = []
    for match in _CANDIDATE.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 12 <= len(digits) <= 19 and luhn_valid(digits):
            found.append((match.start(), match.end(), digits))
    return found


def find_pans(text: str) -> int:
    """How many PAN-like numbers `text` holds."""
    return len(_pans(text))


def mask_pans(text: str) -> tuple[str, int]:
    """`text` with every PAN-like number masked to its last four digits; and how many there were."""
    found = _pans(text)
    if not found:
        return text, 0
    out, last = [], 0
    for start, end, digits in found:
        out.append(text[last:start])
        out.append("*" * (len(digits) - 4) + digits[-4:])
        last = end
    out.append(text[last:])
    return "".join(out), len(found)


def protect_fields(document: Any, paths: list[tuple[str, str]],
                   protect: Callable[[str, Any], Any]) -> Any:
    """Apply `protect(rule, value)` to every value at each dotted path; rule is the route's action."""
    for path, rule in paths:
        document = _at(document, path.split("."), functools.partial(protect, rule))
    return document


def _at(node: Any, steps: list[str], change: Callable[[Any], Any]) -> Any:
    if not steps:
        return change(node) if node is not None else None
    head, rest = steps[0], steps[1:]
    if head == "*" and isinstance(node, list):
        return [_at(item, rest, change) for item in node]
    if isinstance(node, dict) and head in node:
        return {**node, head: _at(node[head], rest, change)}
    return node
