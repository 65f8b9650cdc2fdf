"""Text kept or shown in clear: the one card-number detector.

Every field the vault stores or shows unencrypted (references, subject ids, hold reasons,
case references, consent sources, request outcomes, client and operator names, audit
filters, request ids and user agents) and every log line goes through `contains_pan` or
`redact_pans`, so a PAN cannot slip into clear text by a separator the check did not expect.
It sits at the bottom of the domain so every wing can use it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from vault.errors import ValidationFailed

__all__ = ["luhn_valid", "contains_pan", "redact_pans", "count_and_redact_pans", "refuse_pan"]

def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0



# A run is digits (any script's decimal digits) with up to two separators (space . / _ : , -)
# between neighbours. It holds a PAN when, from the start of one of its groups, 12 to 19 digits
# pass Luhn: a PAN written "dddd.dddd.dddd.dddd", a PAN followed by its CVV (19 solid digits, or
# "dddd-dddd-dddd-dddd ccc"), a PAN after an order number or after leading zeros. (The examples with
# test card numbers are in tests/api/http/test_clear_fields.py.)
# A solid digit run is tried from its start only, so a card token's inner windows are not flagged.
_RUN = re.compile(r"\d(?:[ ./_:,\-]{0,2}\d)*")
_SEPARATOR = re.compile(r"[ ./_:,\-]+")
_PAN_MIN, _PAN_MAX = 12, 19
_NOT_DIGIT = re.compile(r"\D+")


def _few_digits(text: str) -> bool:
    """Fewer than 12 digits in all of `text`: no run in it can hold a PAN (issue #21: every log line's
    fields pass through `redact_pans`, and most hold a few short digit runs, each tried in full before)."""
    return len(text) < _PAN_MIN or len(_NOT_DIGIT.sub("", text)) < _PAN_MIN


def _run_holds_pan(run: str) -> bool:
    if _few_digits(run):
        return False
    groups = ["".join(str(unicodedata.decimal(char)) for char in group) for group in _SEPARATOR.split(run)]
    for start in range(len(groups)):
        # No card number starts with 0 (ISO/IEC 7812 issues none under MII 0): leading zeros are padding.
        digits = "".join(groups[start:]).lstrip("0")[:_PAN_MAX]
        for length in range(_PAN_MIN, len(digits) + 1):
            if luhn_valid(digits[:length]):
                return True
    return False


def contains_pan(text: str) -> bool:
    """True when `text` holds something that may be a card number (see `_RUN`)."""
    if _few_digits(text):
        return False
    return any(_run_holds_pan(match.group(0)) for match in _RUN.finditer(text))


def redact_pans(text: str, replacement: str = "[redacted-pan]") -> str:
    """`text` with every digit run that may hold a card number replaced."""
    if _few_digits(text):
        return text
    return _RUN.sub(lambda m: replacement if _run_holds_pan(m.group(0)) else m.group(0), text)


def count_and_redact_pans(text: str, replace: Callable[[str], str]) -> tuple[str, int]:
    """`text` with every digit run that may hold a card number replaced by `replace(run)`; and how many."""
    count = 0

    def swap(match: re.Match[str]) -> str:
        nonlocal count
        if not _run_holds_pan(match.group(0)):
            return match.group(0)
        count += 1
        return replace(match.group(0))

    return _RUN.sub(swap, text), count


def refuse_pan(field: str, text: str) -> str:
    """`text` unchanged, or ValidationFailed (never echoing it) when it may hold a card number."""
    if contains_pan(text):
        raise ValidationFailed(field, "must not contain a card number")
    return text
