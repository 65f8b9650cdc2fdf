"""Card numbers: Luhn, brand detection, and the masks PCI DSS allows.

Brand ranges follow the issuers' published IIN tables; lengths are checked per brand
so a number that is Luhn-valid but impossible for its brand is refused.
"""

from __future__ import annotations

from vault.clear_text import luhn_valid

__all__ = ["luhn_valid", "detect_brand", "BRANDS"]

# (brand, prefix ranges as (low, high) over the first N digits, allowed lengths)
_RANGES: list[tuple[str, list[tuple[str, str]], frozenset[int]]] = [
    ("amex", [("34", "34"), ("37", "37")], frozenset({15})),
    ("diners", [("300", "305"), ("36", "36"), ("38", "39")], frozenset({14, 16, 17, 18, 19})),
    ("jcb", [("3528", "3589")], frozenset({16, 17, 18, 19})),
    ("visa", [("4", "4")], frozenset({13, 16, 19})),
    (
        "maestro",
        [("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("5893", "5893"), ("6304", "6304"),
         ("6759", "6759"), ("6761", "6763")],
        frozenset(range(12, 20)),
    ),
    ("mastercard", [("51", "55"), ("2221", "2720")], frozenset({16})),
    ("discover", [("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")], frozenset({16, 17, 18, 19})),
    ("unionpay", [("62", "62"), ("81", "81")], frozenset({16, 17, 18, 19})),
]

BRANDS = tuple(name for name, _, _ in _RANGES)


def detect_brand(pan: str) -> str | None:
    """The card brand for a PAN of plain digits, or None if no brand fits prefix and length."""
    for name, ranges, lengths in _RANGES:
        for low, high in ranges:
            prefix = pan[: len(low)]
            if low <= prefix <= high and len(pan) in lengths:
                return name
    return None

