"""vault/clear_text.py: the quick "too few digits" exit gives what the full run-by-run check gives."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from vault.clear_text import contains_pan, luhn_valid, redact_pans

_RUN = re.compile(r"\d(?:[ ./_:,\-]{0,2}\d)*")
_SEPARATOR = re.compile(r"[ ./_:,\-]+")


def _full_check(run: str) -> bool:
    """The detector as it was before the quick exit (every run tried from each group's start)."""
    groups = ["".join(str(unicodedata.decimal(char)) for char in group) for group in _SEPARATOR.split(run)]
    for start in range(len(groups)):
        digits = "".join(groups[start:]).lstrip("0")[:19]
        for length in range(12, len(digits) + 1):
            if luhn_valid(digits[:length]):
                return True
    return False


# Digits (ASCII and another script's), separators and letters: many runs near the 12-digit edge.
_TEXT = st.text(alphabet=st.sampled_from("0123456789012345678945 -./:_,ab\u0663\u0669T"), max_size=40)


@settings(max_examples=600, deadline=None)
@given(_TEXT)
def test_quick_exit_agrees_with_the_full_check(text: str) -> None:
    expected = _RUN.sub(lambda m: "[redacted-pan]" if _full_check(m.group(0)) else m.group(0), text)
    assert redact_pans(text) == expected
    assert contains_pan(text) == any(_full_check(m.group(0)) for m in _RUN.finditer(text))


def test_twelve_digit_pan_at_the_edge_is_still_found() -> None:
    # The shortest card numbers the detector looks for: 12 digits passing Luhn, alone and in a sentence.
    twelve = next(str(n) for n in range(100000000000, 100000000100) if luhn_valid(str(n)))
    assert contains_pan(twelve) and redact_pans(f"id {twelve}.") == "id [redacted-pan]."
