"""Card numbers: the Luhn check and brand detection by prefix range and length."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.tokens.cards import BRANDS, detect_brand, luhn_valid


def check_digit(body: str) -> str:
    """The Luhn check digit for `body`, computed independently of vault.cards."""
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:  # these digits are doubled once the check digit is appended
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def with_check_digit(prefix: str, length: int) -> str:
    """A Luhn-valid number of `length` digits starting with `prefix` (zeros in between)."""
    body = prefix + "0" * (length - 1 - len(prefix))
    return body + check_digit(body)


def independently_luhn_valid(number: str) -> bool:
    return check_digit(number[:-1]) == number[-1]


# -- Luhn ---------------------------------------------------------------------------------

LUHN_VALID = ["79927398713", "4111111111111111", "4012888888881881", "5555555555554444", "378282246310005",
              "6011111111111117", "3530111333300000", "0", "00000000000000"]
LUHN_INVALID = ["79927398710", "79927398714", "4111111111111112", "5555555555554445", "378282246310006",
                "1234567812345678", "1"]


@pytest.mark.parametrize("number", LUHN_VALID)
def test_luhn_accepts_published_valid_numbers(number: str) -> None:
    assert luhn_valid(number)


@pytest.mark.parametrize("number", LUHN_INVALID)
def test_luhn_refuses_numbers_with_a_wrong_check_digit(number: str) -> None:
    assert not luhn_valid(number)


@settings(max_examples=60, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=25))
def test_luhn_accepts_exactly_one_check_digit_per_body(body: str) -> None:
    valid = [digit for digit in "0123456789" if luhn_valid(body + digit)]
    assert valid == [check_digit(body)]


@settings(max_examples=60, deadline=None)
@given(st.text("0123456789", min_size=2, max_size=19), st.integers(min_value=0, max_value=18), st.integers(1, 9))
def test_luhn_detects_any_single_digit_error(number: str, position: int, delta: int) -> None:
    number = number[:-1] + check_digit(number[:-1])
    position %= len(number)
    changed = number[:position] + str((int(number[position]) + delta) % 10) + number[position + 1:]
    assert luhn_valid(number)
    assert not luhn_valid(changed)


# -- brands -------------------------------------------------------------------------------

BRAND_VECTORS = [
    # Visa: prefix 4, lengths 13, 16, 19
    ("4222222222222", "visa"),
    ("4111111111111111", "visa"),
    ("4012888888881881", "visa"),
    (with_check_digit("4", 19), "visa"),
    # Mastercard: 51-55 and the 2-series 2221-2720, length 16
    ("5555555555554444", "mastercard"),
    ("5105105105105100", "mastercard"),
    *[(with_check_digit(prefix, 16), "mastercard") for prefix in ("51", "52", "53", "54", "55")],
    ("2223003122003222", "mastercard"),
    ("2221000000000009", "mastercard"),
    (with_check_digit("2221", 16), "mastercard"),
    (with_check_digit("2720", 16), "mastercard"),
    # American Express: 34 and 37, length 15
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    (with_check_digit("34", 15), "amex"),
    # Diners Club: 300-305, 36, 38-39, length 14 (and 16-19)
    ("36227206271667", "diners"),
    ("30569309025904", "diners"),
    ("38520000023237", "diners"),
    # Discover: 6011, 644-649, 65
    ("6011111111111117", "discover"),
    ("6011000990139424", "discover"),
    ("6445644564456445", "discover"),
    (with_check_digit("644", 16), "discover"),
    (with_check_digit("649", 16), "discover"),
    (with_check_digit("65", 16), "discover"),
    (with_check_digit("6011", 19), "discover"),
    # JCB: 3528-3589
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    (with_check_digit("3528", 16), "jcb"),
    (with_check_digit("3589", 16), "jcb"),
    # UnionPay: 62, lengths 16 to 19
    ("6200000000000005", "unionpay"),
    (with_check_digit("62", 17), "unionpay"),
    (with_check_digit("62", 19), "unionpay"),
    # Maestro: 50 and 56-69 (with the domestic ranges 5018, 5020, 5038, 5893, 6304, 6759, 6761-6763), 12 to 19
    ("6759649826438453", "maestro"),
    # Payment providers' published sandbox numbers: Braintree's Maestro test cards (16 and 19 digits),
    # Stripe's UnionPay (16 and 19 digits), Discover and Mastercard 2-series test cards.
    ("6304000000000000", "maestro"),
    ("6799990100000000019", "maestro"),
    ("6205500000000000004", "unionpay"),
    ("6555900000604105", "discover"),
    ("2223003122003222", "mastercard"),
    # Issue #19: Maestro prefixes refused before (6705, 6708, 6935, 6858, 5924, 12-digit 639029).
    (with_check_digit("6705", 16), "maestro"),
    (with_check_digit("6708", 19), "maestro"),
    (with_check_digit("6935", 16), "maestro"),
    (with_check_digit("6858", 18), "maestro"),
    (with_check_digit("5924", 16), "maestro"),
    (with_check_digit("639029", 12), "maestro"),
    (with_check_digit("50", 13), "maestro"),
    (with_check_digit("56", 16), "maestro"),
    # Discover's table lists 622126-622925 (UnionPay cards on the Discover network); 622125 and 622926 are UnionPay.
    (with_check_digit("622126", 16), "discover"),
    (with_check_digit("622925", 19), "discover"),
    (with_check_digit("622125", 16), "unionpay"),
    (with_check_digit("622926", 16), "unionpay"),
    (with_check_digit("6304", 16), "maestro"),
    (with_check_digit("5018", 12), "maestro"),
    (with_check_digit("5893", 19), "maestro"),
    (with_check_digit("6763", 16), "maestro"),
]


@pytest.mark.parametrize(("pan", "brand"), BRAND_VECTORS)
def test_detect_brand_of_luhn_valid_test_pans(pan: str, brand: str) -> None:
    assert luhn_valid(pan) and independently_luhn_valid(pan)
    assert brand in BRANDS
    assert detect_brand(pan) == brand


NOT_A_BRAND = [
    # just outside the Mastercard 2-series
    with_check_digit("2220", 16),
    with_check_digit("2721", 16),
    # prefixes no brand uses
    with_check_digit("3527", 16),
    with_check_digit("7", 16),
    with_check_digit("80", 16),
    with_check_digit("3590", 16),
    with_check_digit("1", 16),
    with_check_digit("9", 16),
]


@pytest.mark.parametrize("pan", NOT_A_BRAND)
def test_detect_brand_is_none_outside_every_range(pan: str) -> None:
    assert luhn_valid(pan)
    assert detect_brand(pan) is None


WRONG_LENGTH = [
    with_check_digit("4", 14),  # Visa is 13, 16 or 19
    with_check_digit("4", 15),
    with_check_digit("4", 17),
    with_check_digit("51", 15),  # Mastercard is 16 only
    with_check_digit("55", 17),
    with_check_digit("2221", 19),
    with_check_digit("37", 14),  # Amex is 15 only
    with_check_digit("37", 16),
    with_check_digit("34", 16),
    with_check_digit("36", 13),  # Diners is 14 or 16-19
    with_check_digit("36", 15),
    with_check_digit("3530", 15),  # JCB is 16-19
    with_check_digit("6011", 15),  # Discover is 16-19
    with_check_digit("62", 15),  # UnionPay is 16-19
    with_check_digit("62", 20),
    with_check_digit("6759", 11),  # Maestro is 12-19
    with_check_digit("6759", 20),
]


@pytest.mark.parametrize("pan", WRONG_LENGTH)
def test_detect_brand_is_none_for_a_length_the_brand_does_not_issue(pan: str) -> None:
    assert luhn_valid(pan)
    assert detect_brand(pan) is None


def test_detect_brand_of_empty_string_is_none() -> None:
    assert detect_brand("") is None
