"""The kinds of data the vault holds, their validation rules and their metadata.

Validation errors name the field and the rule, never the submitted value. Each kind
turns into canonical plaintext bytes (what is encrypted and, for deterministic
tokens, what is HMAC-indexed) plus non-sensitive metadata stored in the clear.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date
from typing import Annotated, Any, Literal

import phonenumbers
import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from vault.access.policy import KindName
from vault.errors import ValidationFailed
from vault.tokens.cards import detect_brand, luhn_valid

__all__ = [
    "KINDS",
    "Kind",
    "CardValue",
    "AddressValue",
    "canonical_bytes",
    "metadata_for",
    "parse_value",
    "check_card_not_expired",
]

Kind = Literal["card", "cvv", "address", "email", "phone", "name", "text"]
KINDS: tuple[str, ...] = ("card", "cvv", "address", "email", "phone", "name", "text")
# The policy names kinds too; the two lists cannot drift apart unnoticed.
assert set(KINDS) == set(KindName.__args__)  # type: ignore[attr-defined]

TEXT_MAX_BYTES = 4096


def _clean_text(value: str) -> str:
    """NFC-normalise and refuse control characters (NUL, bidi overrides and the like)."""
    value = unicodedata.normalize("NFC", value.strip())
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and char not in "\u200d\u200c"):
            raise ValueError("must not contain control or unassigned characters")
    if not value:
        raise ValueError("must not be empty")
    return value


def _pan(value: str) -> str:
    digits = value.replace(" ", "").replace("-", "")
    if not digits.isascii() or not digits.isdigit():
        raise ValueError("must contain only digits, spaces or dashes")
    if not 12 <= len(digits) <= 19:
        raise ValueError("must be 12 to 19 digits")
    if not luhn_valid(digits):
        raise ValueError("fails the Luhn check")
    if detect_brand(digits) is None:
        raise ValueError("is not a number of a supported card brand")
    return digits


def _phone(value: str) -> str:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError("must be an international number starting with +") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _country(value: str) -> str:
    if len(value) != 2 or pycountry.countries.get(alpha_2=value.upper()) is None:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code")
    return value.upper()


def _email(value: str) -> str:
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError("is not a valid email address") from None
    return str(result.normalized)


def _cvv(value: str) -> str:
    if not (value.isascii() and value.isdigit() and len(value) in (3, 4)):
        raise ValueError("must be 3 or 4 digits")
    return value


def _text(value: str) -> str:
    """Free text keeps its line breaks and tabs; other control characters are refused."""
    value = unicodedata.normalize("NFC", value.strip())
    if not value:
        raise ValueError("must not be empty")
    for char in value:
        category = unicodedata.category(char)
        if (category in ("Cc", "Cs", "Co", "Cn") and char not in "\n\r\t") or (
            category == "Cf" and char not in "\u200d\u200c"
        ):
            raise ValueError("must not contain control or unassigned characters")
    if len(value.encode("utf-8")) > TEXT_MAX_BYTES:
        raise ValueError("must be at most 4096 bytes")
    return value


Pan = Annotated[StrictStr, Field(max_length=40), AfterValidator(_pan)]
Phone = Annotated[StrictStr, Field(max_length=40), AfterValidator(_phone)]
Email = Annotated[StrictStr, Field(max_length=320), AfterValidator(_email)]
Cvv = Annotated[StrictStr, Field(max_length=4), AfterValidator(_cvv)]
Country = Annotated[StrictStr, Field(max_length=2), AfterValidator(_country)]
Text = Annotated[StrictStr, Field(max_length=TEXT_MAX_BYTES), AfterValidator(_text)]
Name = Annotated[StrictStr, Field(max_length=200), AfterValidator(_clean_text)]
Line = Annotated[StrictStr, Field(max_length=200), AfterValidator(_clean_text)]
Locality = Annotated[StrictStr, Field(max_length=100), AfterValidator(_clean_text)]
PostalCode = Annotated[StrictStr, Field(max_length=20), AfterValidator(_clean_text)]


class _Strict(BaseModel):
    # hide_input_in_errors: a ValidationError printed or logged anywhere never shows the value.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class CardValue(_Strict):
    pan: Pan
    exp_month: Annotated[StrictInt, Field(ge=1, le=12)]
    exp_year: Annotated[StrictInt, Field(ge=2000, le=2100)]
    holder: Name | None = None


class AddressValue(_Strict):
    name: Name
    line1: Line
    line2: Line | None = None
    city: Locality
    region: Locality | None = None
    postal_code: PostalCode | None = None
    country: Country
    phone: Phone | None = None
    use: Literal["shipping", "billing"]


VALUE_SCHEMAS: dict[str, Any] = {
    "card": CardValue,
    "cvv": Cvv,
    "address": AddressValue,
    "email": Email,
    "phone": Phone,
    "name": Name,
    "text": Text,
}


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def validation_failed(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> ValidationFailed:
    """The first pydantic error as field + rule, never echoing input.

    Keys come from the caller, so a key that is not a plain name (a PAN or an email
    sent as a key) is reported as `(unknown)`; list positions are integers.
    """
    first = exc.errors(include_input=False, include_url=False, include_context=False)[0]
    parts = [str(part) if isinstance(part, int) or _FIELD_NAME.fullmatch(str(part)) else "(unknown)"
             for part in (*prefix, *first["loc"])]
    rule = "is not an accepted field" if first["type"] == "extra_forbidden" else str(first["msg"])
    return ValidationFailed(".".join(parts) or "body", rule.removeprefix("Value error, "))


def check_card_not_expired(card: CardValue, today: date) -> None:
    """A card is usable through the last day of its expiry month."""
    if (card.exp_year, card.exp_month) < (today.year, today.month):
        raise ValueError("card has expired")


def parse_value(kind: str, value: object) -> CardValue | AddressValue | str:
    """Validate a raw value of a kind; raises pydantic.ValidationError."""
    from pydantic import TypeAdapter

    adapter: TypeAdapter[Any] = _ADAPTERS[kind]
    parsed: CardValue | AddressValue | str = adapter.validate_python(value)
    return parsed


def canonical_bytes(value: CardValue | AddressValue | str) -> bytes:
    """Stable serialisation: what is encrypted and what deterministic tokens index."""
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def value_from_bytes(plaintext: bytes) -> Any:
    """Inverse of canonical_bytes, as plain JSON data for responses."""
    return json.loads(plaintext.decode("utf-8"))


def metadata_for(kind: str, value: CardValue | AddressValue | str, *, keep_bin: bool) -> dict[str, Any]:
    """Non-sensitive facts readable without detokenizing (PCI DSS 3.4.1: at most BIN + last four)."""
    if isinstance(value, CardValue):
        meta: dict[str, Any] = {
            "brand": detect_brand(value.pan),
            "last4": value.pan[-4:],
            "exp_month": value.exp_month,
            "exp_year": value.exp_year,
        }
        if keep_bin and len(value.pan) >= 16:
            meta["bin"] = value.pan[:6]
        return meta
    if isinstance(value, AddressValue):
        return {"country": value.country, "use": value.use}
    return {}


def _build_adapters() -> dict[str, Any]:
    from pydantic import TypeAdapter

    hidden = ConfigDict(hide_input_in_errors=True)
    return {
        kind: TypeAdapter(schema) if isinstance(schema, type) and issubclass(schema, BaseModel)
        else TypeAdapter(schema, config=hidden)
        for kind, schema in VALUE_SCHEMAS.items()
    }


_ADAPTERS = _build_adapters()
