"""Response protection: what a partner's answer may not carry back to the caller.

A route names response fields (dotted JSON paths; `*` crosses every item of a list) that carry
card or personal data: each is tokenized or redacted. Then the vault's one PAN detector
(vault/clear_text.py: any 12-19 digit run passing Luhn, whatever separators sit between the
digits, alone or followed by more digits) scans whatever is left, in every content type. A run
that is exactly one card number is masked to its last four digits; a run holding more (a PAN
followed by its CVV, an order number before it) is replaced whole, so no digit of a CVV or a
PAN's middle survives. A bare PAN has no expiry, so it cannot become a card token; it is masked.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from vault.clear_text import contains_pan, count_and_redact_pans, luhn_valid

__all__ = ["find_pans", "mask_pans", "protect_fields", "REDACTED", "REDACTED_PAN"]

REDACTED = "[redacted]"
REDACTED_PAN = "[redacted-pan]"
_NOT_DIGIT = re.compile(r"\D")


def _masked(run: str) -> str:
    digits = _NOT_DIGIT.sub("", run)
    # Only a run that is one whole card number keeps its last four: anything else may end in a CVV.
    if run.isascii() and 12 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits):
        return "*" * (len(digits) - 4) + digits[-4:]
    return REDACTED_PAN


def find_pans(text: str) -> bool:
    """Whether `text` holds anything the PAN detector takes for a card number."""
    return contains_pan(text)


def mask_pans(text: str) -> tuple[str, int]:
    """`text` with every PAN-like run masked (see the module doc); and how many there were."""
    return count_and_redact_pans(text, _masked)


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
