"""The kinds of data: validation, normalisation, canonical bytes and metadata.

Every refusal must name the field and the rule, never the submitted value.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from vault.tokens.kinds import (
    KINDS,
    AddressValue,
    CardValue,
    canonical_bytes,
    check_card_not_expired,
    metadata_for,
    parse_value,
)

PAN = "4111111111111111"
CARD = {"pan": PAN, "exp_month": 12, "exp_year": 2030}
FULLWIDTH_PAN = "".join(chr(0xFF10 + int(digit)) for digit in PAN)  # full-width digits: isdigit() but not ASCII
FULLWIDTH_CVV = "".join(chr(0xFF10 + int(digit)) for digit in "123")
ADDRESS = {"name": "Ann Example", "line1": "1 Main Street", "city": "Berlin", "postal_code": "10115",
           "country": "DE", "use": "shipping"}


def refusal(kind: str, value: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse_value(kind, value)
    return caught.value


def messages(error: ValidationError) -> list[str]:
    return [str(item["msg"]) for item in error.errors(include_input=False)]


def assert_value_not_echoed(error: ValidationError, secret: str) -> None:
    """Neither the messages nor anything else in the input-free error details repeat the value."""
    details = error.errors(include_input=False)
    assert details
    for item in details:
        assert secret not in str(item["msg"])
        assert secret not in repr(item)


# -- accepted and normalised ----------------------------------------------------------------

@pytest.mark.parametrize("written", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
                                     " 4111 1111-1111 1111 ".strip()])
def test_card_pan_is_normalised_to_plain_digits(written: str) -> None:
    card = parse_value("card", {**CARD, "pan": written})
    assert isinstance(card, CardValue)
    assert card.pan == PAN


def test_card_keeps_holder_and_expiry() -> None:
    card = parse_value("card", {**CARD, "holder": "Zoë Example"})
    assert isinstance(card, CardValue)
    assert (card.exp_month, card.exp_year, card.holder) == (12, 2030, "Zoë Example")


@pytest.mark.parametrize("written", ["+1 (415) 555-2671", "+1-415-555-2671", "+14155552671"])
def test_phone_is_normalised_to_e164(written: str) -> None:
    assert parse_value("phone", written) == "+14155552671"


def test_phone_of_another_country_is_normalised_to_e164() -> None:
    assert parse_value("phone", "+44 20 7946 0958") == "+442079460958"


def test_email_domain_is_normalised_to_lower_case() -> None:
    assert parse_value("email", "John.Doe@EXAMPLE.com") == "John.Doe@example.com"


def test_internationalised_email_is_accepted() -> None:
    assert parse_value("email", "jürgen@bücher.de") == "jürgen@bücher.de"


def test_address_country_is_upper_cased() -> None:
    address = parse_value("address", {**ADDRESS, "country": "de"})
    assert isinstance(address, AddressValue)
    assert address.country == "DE"


@pytest.mark.parametrize("name", ["山田太郎", "Владимир Петров", "محمد علي", "Αλέξανδρος", "José Núñez"])
def test_names_in_other_scripts_are_accepted(name: str) -> None:
    assert parse_value("name", name) == name


def test_names_are_nfc_normalised() -> None:
    decomposed = "Jose\u0301"
    assert parse_value("name", decomposed) == "Jos\u00e9"


def test_text_surrounding_whitespace_is_stripped() -> None:
    assert parse_value("text", "  a note  ") == "a note"


def test_text_of_exactly_4096_bytes_is_accepted() -> None:
    value = "é" * 2048
    assert len(value.encode()) == 4096
    assert parse_value("text", value) == value


@pytest.mark.parametrize("cvv", ["123", "0000", "9876"])
def test_cvv_of_three_or_four_digits_is_accepted(cvv: str) -> None:
    assert parse_value("cvv", cvv) == cvv


def test_every_kind_has_a_schema() -> None:
    samples: dict[str, Any] = {"card": CARD, "cvv": "123", "address": ADDRESS, "email": "a@example.com",
                               "phone": "+14155552671", "name": "Ann", "text": "hello"}
    assert set(samples) == set(KINDS)
    for kind, sample in samples.items():
        parse_value(kind, sample)


# -- refused, without echoing the value ------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "secret", "rule"),
    [
        ({**CARD, "pan": "4111111111111112"}, "4111111111111112", "fails the Luhn check"),
        ({**CARD, "pan": "4111 1111 1111 1112"}, "4111 1111 1111 1112", "fails the Luhn check"),
        ({**CARD, "pan": "41111111111"}, "41111111111", "must be 12 to 19 digits"),
        ({**CARD, "pan": "41111111111111111113"}, "41111111111111111113", "must be 12 to 19 digits"),
        ({**CARD, "pan": "1234567812345670"}, "1234567812345670", "not a number of a supported card brand"),
        ({**CARD, "pan": "4111x11111111111"}, "4111x11111111111", "must contain only digits"),
        ({**CARD, "pan": FULLWIDTH_PAN}, FULLWIDTH_PAN, "must contain only digits"),
    ],
)
def test_card_pan_is_refused_without_echoing_it(value: dict[str, Any], secret: str, rule: str) -> None:
    error = refusal("card", value)
    assert [item["loc"] for item in error.errors(include_input=False)] == [("pan",)]
    assert any(rule in message for message in messages(error))
    assert_value_not_echoed(error, secret)
    assert_value_not_echoed(error, secret.replace(" ", ""))


def test_card_expiry_month_13_is_refused() -> None:
    error = refusal("card", {**CARD, "exp_month": 13})
    assert [item["loc"] for item in error.errors(include_input=False)] == [("exp_month",)]
    assert_value_not_echoed(error, PAN)


def test_card_expiry_as_string_is_refused() -> None:
    error = refusal("card", {**CARD, "exp_month": "12"})
    assert [item["loc"] for item in error.errors(include_input=False)] == [("exp_month",)]


def test_card_with_unknown_field_is_refused_without_echoing_it() -> None:
    error = refusal("card", {**CARD, "cvv": "987"})
    details = error.errors(include_input=False)
    assert [(item["loc"], item["type"]) for item in details] == [(("cvv",), "extra_forbidden")]
    assert_value_not_echoed(error, "987")
    assert_value_not_echoed(error, PAN)


def test_expired_card_is_refused_by_check_card_not_expired() -> None:
    card = parse_value("card", {**CARD, "exp_month": 12, "exp_year": 2029})
    assert isinstance(card, CardValue)
    with pytest.raises(ValueError, match="card has expired") as caught:
        check_card_not_expired(card, date(2030, 1, 1))
    assert PAN not in str(caught.value)


def test_card_is_usable_through_its_expiry_month() -> None:
    card = parse_value("card", {**CARD, "exp_month": 1, "exp_year": 2030})
    assert isinstance(card, CardValue)
    check_card_not_expired(card, date(2030, 1, 31))
    check_card_not_expired(card, date(2029, 12, 31))
    with pytest.raises(ValueError):
        check_card_not_expired(card, date(2030, 2, 1))


@pytest.mark.parametrize(("value", "secret"), [("12", "12"), ("98765", "98765"), ("1a3", "1a3"),
                                               (FULLWIDTH_CVV, FULLWIDTH_CVV), ("", None)])
def test_cvv_of_wrong_length_or_non_digits_is_refused(value: str, secret: str | None) -> None:
    error = refusal("cvv", value)
    if secret:
        assert_value_not_echoed(error, secret)


def test_cvv_as_int_is_refused() -> None:
    error = refusal("cvv", 987)
    assert [item["type"] for item in error.errors(include_input=False)] == ["string_type"]
    assert_value_not_echoed(error, "987")


def test_address_without_country_is_refused() -> None:
    value = {key: item for key, item in ADDRESS.items() if key != "country"}
    error = refusal("address", value)
    assert [(item["loc"], item["type"]) for item in error.errors(include_input=False)] == [
        (("country",), "missing")]


@pytest.mark.parametrize("country", ["XX", "EU", "DEU", "1A", ""])
def test_address_with_a_bad_country_is_refused(country: str) -> None:
    error = refusal("address", {**ADDRESS, "country": country})
    assert [item["loc"] for item in error.errors(include_input=False)] == [("country",)]


@pytest.mark.parametrize("use", ["home", "Shipping", "", None])
def test_address_with_a_bad_use_is_refused(use: object) -> None:
    error = refusal("address", {**ADDRESS, "use": use})
    assert [item["loc"] for item in error.errors(include_input=False)] == [("use",)]


def test_address_refusal_does_not_echo_the_street() -> None:
    error = refusal("address", {**ADDRESS, "line1": "742 Evergreen Terrace\u202e", "country": "XX"})
    assert {item["loc"] for item in error.errors(include_input=False)} == {("line1",), ("country",)}
    assert_value_not_echoed(error, "742 Evergreen Terrace")


def test_text_over_4096_bytes_is_refused_even_under_4096_characters() -> None:
    value = "€" * 1366  # 1366 characters, 4098 bytes
    assert len(value) < 4096 < len(value.encode())
    error = refusal("text", value)
    assert any("at most 4096 bytes" in message for message in messages(error))
    assert_value_not_echoed(error, "€€€€")


def test_text_over_4096_characters_is_refused() -> None:
    refusal("text", "x" * 4097)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("text", "secret\x00note"),
        ("text", "line\x07bell"),
        ("text", "left\u202eright"),
        ("name", "embedded\nnewline"),
        ("name", "Ann\x00"),
        ("name", "Ann\u202eExample"),
        ("name", "Ann\x1bExample"),
    ],
)
def test_control_characters_and_bidi_overrides_are_refused(kind: str, value: str) -> None:
    """Free text keeps line breaks and tabs (test below); every other control character is refused."""
    error = refusal(kind, value)
    assert any("control" in message for message in messages(error))
    assert_value_not_echoed(error, value)


@pytest.mark.parametrize(("kind", "value"), [("name", ""), ("name", "   "), ("name", "\t"), ("text", "")])
def test_blank_values_are_refused(kind: str, value: str) -> None:
    refusal(kind, value)


@pytest.mark.parametrize("value", ["   ", "\t\n", "\x1c\x1d\x1e\x1f"])
def test_whitespace_or_control_only_text_is_refused(value: str) -> None:
    refusal("text", value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("email", "not-an-email"), ("email", "john@"), ("phone", "020 7946 0958"), ("phone", "+1 555"),
     ("phone", "+999 12345")],
)
def test_malformed_email_and_phone_are_refused_without_echoing(kind: str, value: str) -> None:
    error = refusal(kind, value)
    assert_value_not_echoed(error, value)


@pytest.mark.parametrize(
    ("kind", "value", "secret"),
    [
        ("card", {**CARD, "pan": "4111111111111112"}, "4111111111111112"),
        ("card", {**CARD, "pan": "1234567812345670"}, "1234567812345670"),
        ("card", {**CARD, "cvv": "987"}, "987"),
        ("cvv", "98765", "98765"),
    ],
)
def test_str_of_validation_error_does_not_contain_the_value(kind: str, value: object, secret: str) -> None:
    error = refusal(kind, value)
    assert secret not in str(error)


# -- canonical bytes ---------------------------------------------------------------------------

def pan_with_separators() -> st.SearchStrategy[str]:
    separators = st.lists(st.sampled_from(["", "", " ", "-"]), min_size=len(PAN) - 1, max_size=len(PAN) - 1)
    return separators.map(lambda seps: PAN[0] + "".join(sep + digit for sep, digit in zip(seps, PAN[1:],
                                                                                         strict=True)))


@settings(max_examples=40, deadline=None)
@given(pan_with_separators())
def test_canonical_bytes_of_a_card_do_not_depend_on_pan_formatting(written: str) -> None:
    plain = canonical_bytes(parse_value("card", CARD))
    assert canonical_bytes(parse_value("card", {**CARD, "pan": written})) == plain


def test_canonical_bytes_of_a_card_are_sorted_compact_json() -> None:
    card = parse_value("card", {"exp_year": 2030, "pan": "4111 1111 1111 1111", "exp_month": 12})
    assert canonical_bytes(card) == b'{"exp_month":12,"exp_year":2030,"pan":"4111111111111111"}'


def test_canonical_bytes_of_an_address_ignore_key_order_case_and_absent_optionals() -> None:
    first = parse_value("address", ADDRESS)
    second = parse_value("address", {**dict(reversed(list(ADDRESS.items()))), "country": "de", "line2": None})
    assert canonical_bytes(first) == canonical_bytes(second)


@pytest.mark.parametrize(
    ("kind", "one", "other"),
    [("phone", "+1 (415) 555-2671", "+14155552671"),
     ("name", "Jose\u0301", "Jos\u00e9"),
     ("email", "ann@EXAMPLE.COM", "ann@example.com")],
)
def test_canonical_bytes_are_the_same_for_equivalent_inputs(kind: str, one: str, other: str) -> None:
    assert canonical_bytes(parse_value(kind, one)) == canonical_bytes(parse_value(kind, other))


def test_canonical_bytes_keep_non_ascii_as_utf8() -> None:
    assert canonical_bytes(parse_value("name", "山田")) == '"山田"'.encode()


# -- metadata ------------------------------------------------------------------------------------

def test_card_metadata_has_brand_last4_and_expiry_but_no_bin_by_default() -> None:
    card = parse_value("card", CARD)
    assert metadata_for("card", card, keep_bin=False) == {"brand": "visa", "last4": "1111", "exp_month": 12,
                                                          "exp_year": 2030}


def test_card_metadata_has_bin_with_keep_bin_for_16_digits() -> None:
    card = parse_value("card", {**CARD, "pan": "5555555555554444"})
    meta = metadata_for("card", card, keep_bin=True)
    assert meta == {"brand": "mastercard", "last4": "4444", "exp_month": 12, "exp_year": 2030, "bin": "555555"}


def test_card_metadata_has_no_bin_for_pans_shorter_than_16() -> None:
    card = parse_value("card", {**CARD, "pan": "378282246310005"})
    meta = metadata_for("card", card, keep_bin=True)
    assert "bin" not in meta
    assert meta["brand"] == "amex" and meta["last4"] == "0005"


def test_card_metadata_never_holds_the_pan_or_holder() -> None:
    card = parse_value("card", {**CARD, "holder": "Ann Example"})
    for keep_bin in (False, True):
        values = [str(item) for item in metadata_for("card", card, keep_bin=keep_bin).values()]
        assert not any(PAN in item or PAN[6:12] in item or "Ann" in item for item in values)


def test_address_metadata_is_country_and_use_only() -> None:
    address = parse_value("address", ADDRESS)
    assert metadata_for("address", address, keep_bin=True) == {"country": "DE", "use": "shipping"}


@pytest.mark.parametrize(("kind", "value"), [("email", "a@example.com"), ("phone", "+14155552671"),
                                             ("name", "Ann"), ("text", "note"), ("cvv", "123")])
def test_other_kinds_have_no_metadata(kind: str, value: str) -> None:
    assert metadata_for(kind, parse_value(kind, value), keep_bin=True) == {}


def test_text_keeps_line_breaks_and_tabs() -> None:
    assert parse_value("text", "line one\n\tline two\r\nthree") == "line one\n\tline two\r\nthree"
