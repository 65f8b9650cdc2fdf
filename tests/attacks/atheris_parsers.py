"""libFuzzer (atheris) harness for the card and address parsers; run by test_atheris.py in a subprocess.

Input bytes become a card or an address (or arbitrary JSON) and go through
vault.kinds.parse_value; pydantic's ValidationError is the only accepted failure and
its text must not repeat the PAN. Anything else is a crash: libFuzzer stops, prints the
input and exits non-zero. Arguments are passed on to libFuzzer (-runs, -max_total_time).
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import date
from typing import Any

import atheris
from pydantic import ValidationError

with atheris.instrument_imports(include=["vault"]):
    from vault.tokens.cards import detect_brand, luhn_valid
    from vault.tokens.kinds import canonical_bytes, check_card_not_expired, metadata_for, parse_value

# Mostly legitimate letters in several scripts, with hostile ones mixed in now and then.
_CHARS = [*"abcXYZ019 .,'-\u00e9\u00df\u0416\u4e2d\u0627\u05d0\u0301\u200d",
          "\x00", "\n", "\u202e", "\u2066", "\ufeff", "\ue000", "\U0010ffff", "\u0378"]


def _scalar(data: atheris.FuzzedDataProvider) -> Any:
    choice = data.ConsumeIntInRange(0, 5)
    if choice == 0:
        return data.ConsumeUnicodeNoSurrogates(data.ConsumeIntInRange(0, 48))
    if choice == 1:
        return data.ConsumeInt(8)
    if choice == 2:
        return data.ConsumeFloat()
    if choice == 3:
        return data.ConsumeBool()
    if choice == 4:
        return None
    return data.ConsumeUnicode(data.ConsumeIntInRange(0, 48))


_PREFIXES = ("4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "35", "62", "36", "300", "50", "67", "1", "9")
_COUNTRIES = ("US", "GB", "FR", "JP", "us", "XX", "G", "GBR", "\u0130T")


def _luhn_fixed(digits: str) -> str:
    """`digits` with its last digit replaced so that the whole passes the Luhn check."""
    for last in "0123456789":
        if luhn_valid(digits[:-1] + last):
            return digits[:-1] + last
    return digits


def _pan(data: atheris.FuzzedDataProvider) -> str:
    length = data.ConsumeIntInRange(10, 21)
    digits = data.PickValueInList(list(_PREFIXES))
    digits += "".join(str(data.ConsumeIntInRange(0, 9)) for _ in range(max(0, length - len(digits))))
    if data.ConsumeBool():
        digits = _luhn_fixed(digits)
    separated = ""
    for digit in digits:
        separated += digit
        if data.ConsumeIntInRange(0, 7) == 0:
            separated += data.PickValueInList([" ", "-", "  ", "\t", "\u00a0", "\uff11"])
    return separated


def _card(data: atheris.FuzzedDataProvider) -> Any:
    value: dict[str, Any] = {"pan": _pan(data) if data.ConsumeIntInRange(0, 5) else _scalar(data),
                             "exp_month": data.ConsumeIntInRange(-2, 14) if data.ConsumeBool() else _scalar(data),
                             "exp_year": data.ConsumeIntInRange(1995, 2105) if data.ConsumeIntInRange(0, 5)
                             else _scalar(data)}
    if data.ConsumeBool():
        value["holder"] = _scalar(data)
    return value


def _text(data: atheris.FuzzedDataProvider) -> Any:
    if not data.ConsumeIntInRange(0, 5):
        return _scalar(data)
    clean = data.ConsumeIntInRange(0, 3) > 0
    pool = _CHARS[:-8] if clean else _CHARS
    return "".join(data.PickValueInList(pool) for _ in range(data.ConsumeIntInRange(1, 40)))


def _address(data: atheris.FuzzedDataProvider) -> Any:
    value: dict[str, Any] = {name: _text(data) for name in ("name", "line1", "city")}
    value["country"] = data.PickValueInList(list(_COUNTRIES)) if data.ConsumeIntInRange(0, 5) else _text(data)
    value["use"] = data.PickValueInList(["shipping", "billing", "Shipping", ""])
    for name in ("line2", "region", "postal_code"):
        if data.ConsumeBool():
            value[name] = _text(data)
    if data.ConsumeBool():
        value["phone"] = "+" + "".join(str(data.ConsumeIntInRange(0, 9)) for _ in range(data.ConsumeIntInRange(4, 16)))
    if data.ConsumeIntInRange(0, 9) == 0:
        value[_text(data) if data.ConsumeBool() else "extra"] = _scalar(data)
    return value


def one_input(raw: bytes) -> None:
    data = atheris.FuzzedDataProvider(raw)
    kind = "card" if data.ConsumeBool() else "address"
    shape = data.ConsumeIntInRange(0, 3)
    if shape == 0:
        try:
            value = json.loads(data.ConsumeUnicodeNoSurrogates(256))
        except ValueError:
            return
    else:
        value = _card(data) if kind == "card" else _address(data)
    try:
        parsed = parse_value(kind, value)
    except ValidationError as error:
        text = str(error)
        pan = value.get("pan") if isinstance(value, dict) else None
        if isinstance(pan, str) and len(pan) >= 12 and (pan in text or pan.replace(" ", "") in text):
            raise AssertionError("a PAN was echoed in a validation error") from None
        return
    canonical_bytes(parsed)
    metadata_for(kind, parsed, keep_bin=True)
    if kind == "card":
        pan = parsed.pan  # type: ignore[union-attr]
        assert luhn_valid(pan) and detect_brand(pan) is not None
        with contextlib.suppress(ValueError):
            check_card_not_expired(parsed, date(2030, 1, 1))  # type: ignore[arg-type]


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
