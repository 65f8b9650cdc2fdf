"""Response protection: what a partner's answer may not carry back to the caller.

A route names response fields (dotted JSON paths; `*` crosses every item of a list) that carry
card or personal data: each is tokenized or redacted. Then the vault's one PAN detector
(vault/clear_text.py: any 12-19 digit run passing Luhn, whatever separators sit between the
digits, alone or followed by more digits) scans whatever is left, in every content type. A run
that is exactly one card number is masked to its last four digits; a run holding more (a PAN
followed by its CVV, an order number before it) is replaced whole, so no digit of a CVV or a
PAN's middle survives. A bare PAN has no expiry, so it cannot become a card token; it is masked.

The detector also flags about a third of card tokens (a 16-digit token whose first 12-15 digits
happen to pass Luhn could be a PAN with digits after it): runs the caller already knows (`known`: the
numbers it sent itself, the tokens made in this call) are left as they are. The vault is not asked
whether a number is a token: that would tell a caller which guesses are live.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from typing import Any

from vault.clear_text import contains_pan, count_and_redact_pans, luhn_valid

__all__ = ["find_pans", "mask_pans", "possible_tokens", "protect_fields", "REDACTED", "REDACTED_PAN"]

REDACTED = "[redacted]"
REDACTED_PAN = "[redacted-pan]"
_NOT_DIGIT = re.compile(r"\D")
_SOLID = re.compile(r"[0-9]{12,19}")


def _masked(run: str) -> str:
    digits = _NOT_DIGIT.sub("", run)
    # Only a run that is one whole card number keeps its last four: anything else may end in a CVV.
    if run.isascii() and 12 <= len(digits) <= 19 and digits[0] != "0" and luhn_valid(digits):
        return "*" * (len(digits) - 4) + digits[-4:]
    return REDACTED_PAN


def possible_tokens(text: str) -> set[str]:
    """Flagged runs that could be card tokens (solid ASCII digits, 12-19, failing Luhn as a whole)."""
    found: set[str] = set()

    def note(run: str) -> str:
        if _SOLID.fullmatch(run) and not luhn_valid(run):
            found.add(run)
        return run

    count_and_redact_pans(text, note)
    return found


def find_pans(text: str) -> bool:
    """Whether `text` holds anything the PAN detector takes for a card number."""
    return contains_pan(text)


def mask_pans(text: str, known: Collection[str] = ()) -> tuple[str, int]:
    """`text` with every PAN-like run masked (see the module doc), except the runs in `known`; and how many
    were masked."""
    kept = 0

    def mask(run: str) -> str:
        nonlocal kept
        if run in known:
            kept += 1
            return run
        return _masked(run)

    masked, count = count_and_redact_pans(text, mask)
    return masked, count - kept


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
