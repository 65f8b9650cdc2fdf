"""Token formats: random, never derived from the value they stand for.

Card tokens keep the PAN's length and last four digits (and, by policy, the first
six) so receipts and support work without detokenizing; the other digits come from
`secrets`, and the token always fails the Luhn check so it can never be charged or
mistaken for a card. Other kinds get `tok_<kind>_` and 192 random bits.
"""

from __future__ import annotations

import re
import secrets

from vault.errors import ValidationFailed
from vault.tokens.cards import luhn_valid

__all__ = ["card_token", "opaque_token", "kind_of_token", "MAX_TOKEN_LENGTH"]

MAX_TOKEN_LENGTH = 64
# fullmatch, not match with `$`: `$` also matches before a trailing newline.
_OPAQUE = re.compile(r"tok_(cvv|address|email|phone|name|text)_[A-Za-z0-9_-]{32}")
_DIGITS = re.compile(r"[0-9]{12,19}")
_BIN_MIN_LENGTH = 16


def card_token(pan: str, *, keep_bin: bool) -> str:
    """A random, Luhn-invalid stand-in for `pan` of the same length and last four."""
    head = pan[:6] if keep_bin and len(pan) >= _BIN_MIN_LENGTH else ""
    random_count = len(pan) - len(head) - 4
    while True:
        # One draw for all the digits (uniform: randbelow is exact), not one system call per digit.
        middle = str(secrets.randbelow(10**random_count)).zfill(random_count)
        candidate = head + middle + pan[-4:]
        if not luhn_valid(candidate):
            return candidate


def opaque_token(kind: str) -> str:
    return f"tok_{kind}_{secrets.token_urlsafe(24)}"


def kind_of_token(token: str) -> str:
    """The kind a well-formed token belongs to; ValidationFailed for anything else.

    A Luhn-valid number is a PAN, not a token: it is refused (without echoing it) so
    a card number can never reach the audit trail or a lookup by mistake.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValidationFailed("token", "is not a token")
    if _DIGITS.fullmatch(token):
        if luhn_valid(token):
            raise ValidationFailed("token", "looks like a card number, not a token")
        return "card"
    match = _OPAQUE.fullmatch(token)
    if match is None:
        raise ValidationFailed("token", "is not a token")
    return match.group(1)
