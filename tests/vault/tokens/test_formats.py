"""Token formats: card tokens look like the card but can never be charged; others are opaque."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.errors import ValidationFailed
from vault.tokens.cards import luhn_valid
from vault.tokens.formats import MAX_TOKEN_LENGTH, card_token, kind_of_token, opaque_token

OPAQUE_KINDS = ("cvv", "address", "email", "phone", "name", "text")
SETTINGS = settings(max_examples=60, deadline=None)


def check_digit(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


@st.composite
def pans(draw: st.DrawFn, min_length: int = 12, max_length: int = 19) -> str:
    """Luhn-valid digit strings: random digits, then the check digit fixed."""
    length = draw(st.integers(min_value=min_length, max_value=max_length))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    return body + check_digit(body)


# -- card tokens ---------------------------------------------------------------------------

@SETTINGS
@given(pans(), st.booleans())
def test_card_token_is_digits_of_same_length_and_last_four(pan: str, keep_bin: bool) -> None:
    assert luhn_valid(pan)
    token = card_token(pan, keep_bin=keep_bin)
    assert token.isascii() and token.isdigit()
    assert len(token) == len(pan)
    assert token[-4:] == pan[-4:]


@SETTINGS
@given(pans(), st.booleans())
def test_card_token_is_never_luhn_valid(pan: str, keep_bin: bool) -> None:
    token = card_token(pan, keep_bin=keep_bin)
    assert not luhn_valid(token)
    assert check_digit(token[:-1]) != token[-1]
    assert token != pan


@SETTINGS
@given(pans(min_length=16))
def test_card_token_keeps_the_bin_with_keep_bin_from_16_digits(pan: str) -> None:
    assert card_token(pan, keep_bin=True)[:6] == pan[:6]


@pytest.mark.parametrize("pan", ["4222222222222", "378282246310005", "50180000000" + check_digit("50180000000")])
def test_card_token_randomises_the_head_of_short_pans_even_with_keep_bin(pan: str) -> None:
    heads = {card_token(pan, keep_bin=True)[:6] for _ in range(40)}
    assert len(heads) > 1
    assert all(card_token(pan, keep_bin=True)[-4:] == pan[-4:] for _ in range(5))


@pytest.mark.parametrize("pan", ["4111111111111111", "6200000000000000003"])
def test_card_token_randomises_the_head_without_keep_bin(pan: str) -> None:
    heads = {card_token(pan, keep_bin=False)[:6] for _ in range(40)}
    assert len(heads) > 1


def test_card_token_with_keep_bin_randomises_only_the_middle() -> None:
    pan = "4111111111111111"
    tokens = [card_token(pan, keep_bin=True) for _ in range(40)]
    assert {token[:6] for token in tokens} == {"411111"}
    assert {token[-4:] for token in tokens} == {"1111"}
    assert len({token[6:-4] for token in tokens}) > 1


def test_many_tokens_for_one_pan_are_distinct() -> None:
    pan = "4111111111111111"
    tokens = {card_token(pan, keep_bin=False) for _ in range(300)}
    assert len(tokens) == 300


# -- opaque tokens ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", OPAQUE_KINDS)
def test_opaque_token_format(kind: str) -> None:
    token = opaque_token(kind)
    assert re.fullmatch(rf"tok_{kind}_[A-Za-z0-9_-]{{32}}", token)
    assert len(token) <= MAX_TOKEN_LENGTH


def test_opaque_tokens_are_distinct() -> None:
    assert len({opaque_token("email") for _ in range(300)}) == 300


# -- kind_of_token ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", OPAQUE_KINDS)
def test_kind_of_opaque_token(kind: str) -> None:
    assert kind_of_token(opaque_token(kind)) == kind


@SETTINGS
@given(pans(), st.booleans())
def test_kind_of_card_token_is_card(pan: str, keep_bin: bool) -> None:
    assert kind_of_token(card_token(pan, keep_bin=keep_bin)) == "card"


@SETTINGS
@given(pans())
def test_kind_of_token_refuses_a_luhn_valid_pan_without_echoing_it(pan: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        kind_of_token(pan)
    error = caught.value
    assert error.field == "token"
    assert "card number" in error.rule
    assert pan not in str(error)
    assert pan not in repr(error.args)


@pytest.mark.parametrize("pan", ["4111111111111111", "378282246310005", "6759649826438453"])
def test_kind_of_token_refuses_published_test_pans(pan: str) -> None:
    with pytest.raises(ValidationFailed, match="looks like a card number") as caught:
        kind_of_token(pan)
    assert pan not in str(caught.value)


GARBAGE = [
    "",
    "hello",
    "tok_",
    "tok_email_",
    "tok_email_" + "a" * 31,
    "tok_email_" + "a" * 33,
    "tok_email_" + "a" * 31 + "!",
    "tok_email_" + "a" * 31 + "=",
    "TOK_email_" + "a" * 32,
    " tok_email_" + "a" * 32,
    "tok_email_" + "a" * 32 + " ",
    "12345678901",  # 11 digits
    "0" * 20,  # 20 digits
    "4111 1111 1111 1112",
    "4111-1111-1111-1112",
    "٤١١١١١١١١١١١١١١٢",  # Arabic-Indic digits
]


@pytest.mark.parametrize("token", GARBAGE)
def test_kind_of_token_refuses_garbage(token: str) -> None:
    with pytest.raises(ValidationFailed, match="is not a token"):
        kind_of_token(token)


@pytest.mark.parametrize("token", ["tok_email_" + "a" * 60, "0" * 65, "x" * 10_000])
def test_kind_of_token_refuses_overlong_strings(token: str) -> None:
    assert len(token) > MAX_TOKEN_LENGTH
    with pytest.raises(ValidationFailed, match="is not a token"):
        kind_of_token(token)


@pytest.mark.parametrize("token", ["tok_email_" + "a" * 31 + "\x00", "\x00tok_email_" + "a" * 32,
                                   "0634476482931112\x00", "063447648293\x001112"])
def test_kind_of_token_refuses_nul_bytes(token: str) -> None:
    with pytest.raises(ValidationFailed):
        kind_of_token(token)


@pytest.mark.parametrize("kind", ["card", "iban", "ssn", "Email", ""])
def test_kind_of_token_refuses_unknown_opaque_kinds(kind: str) -> None:
    with pytest.raises(ValidationFailed, match="is not a token"):
        kind_of_token(f"tok_{kind}_" + "a" * 32)


def test_kind_of_token_refuses_a_pan_with_a_trailing_newline() -> None:
    with pytest.raises(ValidationFailed):
        kind_of_token("4111111111111111\n")


def test_kind_of_token_refuses_an_opaque_token_with_a_trailing_newline() -> None:
    with pytest.raises(ValidationFailed):
        kind_of_token("tok_email_" + "a" * 32 + "\n")


def test_card_token_digits_are_spread_over_every_position() -> None:
    """Every random position takes every digit (a padded or biased draw would leave some out)."""
    pan = "4111111111111111"
    tokens = [card_token(pan, keep_bin=False) for _ in range(2000)]
    for position in range(12):
        assert {token[position] for token in tokens} == set("0123456789"), position
