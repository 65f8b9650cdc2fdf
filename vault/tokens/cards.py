"""Card numbers: Luhn, brand detection, and the masks PCI DSS allows.

Brand ranges follow the networks' published IIN tables, as collected in ISO/IEC 7812's
public register summary (Wikipedia, "Payment card number", IIN ranges table) and the
networks' acceptance guides: Mastercard (51-55, 2221-2720; Maestro 50 and 56-69, 12 to 19
digits, per Mastercard's Maestro acceptance rules, which include the domestic ranges such
as UK 6759 and 6761-6763), Visa (4; 13, 16, 19), American Express (34, 37; 15), Discover
Global Network (6011, 644-649, 65, and 622126-622925; Diners Club 300-305, 3095, 36,
38-39), JCB (3528-3589) and UnionPay (62, 81; 16 to 19).

The prefix names the brand and the length must then fit that brand: the first table entry
whose range holds the number's prefix decides, so order matters. 622126-622925 are
UnionPay cards issued for acceptance on the Discover network: Discover's table lists them,
so they read as `discover` (they sit before the wider UnionPay 62). Maestro's 50 and
56-69 come last: every range another brand claims inside them (Discover's 6011, 644-649,
65; UnionPay's 62) is matched first.
"""

from __future__ import annotations

from vault.clear_text import luhn_valid

__all__ = ["luhn_valid", "detect_brand", "BRANDS"]

# (brand, prefix ranges as (low, high) over the first N digits, allowed lengths), first match wins
_RANGES: list[tuple[str, list[tuple[str, str]], frozenset[int]]] = [
    ("amex", [("34", "34"), ("37", "37")], frozenset({15})),
    ("diners", [("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39")], frozenset({14, 16, 17, 18, 19})),
    ("jcb", [("3528", "3589")], frozenset({16, 17, 18, 19})),
    ("visa", [("4", "4")], frozenset({13, 16, 19})),
    ("mastercard", [("51", "55"), ("2221", "2720")], frozenset({16})),
    ("discover", [("6011", "6011"), ("622126", "622925"), ("644", "649"), ("65", "65")],
     frozenset({16, 17, 18, 19})),
    ("unionpay", [("62", "62"), ("81", "81")], frozenset({16, 17, 18, 19})),
    ("maestro", [("50", "50"), ("56", "69")], frozenset(range(12, 20))),
]

BRANDS = tuple(name for name, _, _ in _RANGES)


def detect_brand(pan: str) -> str | None:
    """The card brand for a PAN of plain digits, or None if no brand's prefix fits, or its length does not."""
    for name, ranges, lengths in _RANGES:
        for low, high in ranges:
            if low <= pan[: len(low)] <= high:
                return name if len(pan) in lengths else None
    return None
