"""Log redaction: the last line of defence against card numbers, emails and credentials in logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.http.logs import RedactingFilter, redact, redact_text
from vault.tokens.cards import luhn_valid

NOT_LUHN = "0634476482931112"  # a card-token-shaped number that fails the Luhn check


def check_digit(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        value = int(char)
        if index % 2 == 0:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return str((10 - total % 10) % 10)


def run(event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact(None, "info", dict(event)))


# -- redact_text -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "pan",
    ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005", "3782 822463 10005",
     "5555555555554444", "6759649826438453", "4222222222222", "6200000000000005"],
)
def test_luhn_valid_card_numbers_are_redacted(pan: str) -> None:
    assert luhn_valid(pan.replace(" ", "").replace("-", ""))
    redacted = redact_text(f"charge pan={pan} done")
    assert redacted == "charge pan=[redacted-pan] done"


def test_several_card_numbers_in_one_line_are_all_redacted() -> None:
    line = "old 4111111111111111, new 5555-5555-5555-4444."
    assert redact_text(line) == "old [redacted-pan], new [redacted-pan]."


def test_non_luhn_numbers_are_kept() -> None:
    assert not luhn_valid(NOT_LUHN)
    line = f"token {NOT_LUHN} amount 1999 order 123456789012345678"
    assert not luhn_valid("123456789012345678")
    assert redact_text(line) == line


@pytest.mark.parametrize("line", ["2024-06-01T12:00:00Z took 12 ms", "port 8080 pid 4242", "000000000000000000"])
def test_short_or_zero_digit_runs_are_kept(line: str) -> None:
    assert redact_text(line) == line


@pytest.mark.parametrize("line", ["4111111111111111111111", "4111111111111111123", "5105.1051.0510.5100",
                                  "4111/1111/1111/1111", "4111_1111_1111_1111", "0004111111111111111",
                                  "\uff14" + "\uff11" * 15, "GET /v1/subjects/5105.1051.0510.5100/export"])
def test_a_card_number_with_any_separator_or_followed_by_digits_is_redacted(line: str) -> None:
    """Issue #19: the same detector as every clear field (vault.clear_text): dots, slashes, a CVV after it."""
    assert "[redacted-pan]" in redact_text(line)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=12, max_value=19), st.data())
def test_any_luhn_valid_digit_run_is_redacted(length: int, data: st.DataObject) -> None:
    # No card number starts with 0 (ISO/IEC 7812): leading zeros are padding, not part of a PAN.
    body = data.draw(st.sampled_from("123456789")) + data.draw(st.text("0123456789", min_size=length - 2,
                                                                       max_size=length - 2))
    pan = body + check_digit(body)
    redacted = redact_text(f"value: {pan} end")
    assert pan not in redacted
    assert redacted == "value: [redacted-pan] end"


def test_emails_are_redacted() -> None:
    assert redact_text("sent to john.doe+shop@example.co.uk today") == "sent to [redacted-email] today"


def test_api_keys_are_redacted() -> None:
    assert redact_text("auth with tvk_AbC-123_xyz failed") == "auth with [redacted-key] failed"


def test_text_without_anything_sensitive_is_unchanged() -> None:
    line = "tokenized 3 values for client checkout in 12 ms"
    assert redact_text(line) == line


@pytest.mark.parametrize("line", ["pan/cvv 4111111111111111 123", "card 4111111111111111 12"])
def test_card_number_followed_by_short_number_is_redacted(line: str) -> None:
    assert "4111111111111111" not in redact_text(line)


# -- the structlog processor ------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["value", "values", "pan", "cvv", "password", "api_key", "authorization",
                                 "Authorization", "PAN", "secret", "plaintext", "totp"])
def test_sensitive_keys_are_blanked_whatever_their_content(key: str) -> None:
    out = run({"event": "request", key: "harmless-looking"})
    assert out[key] == "[redacted]"
    assert out["event"] == "request"


@pytest.mark.parametrize("content", [12345, None, ["a"], {"nested": 1}, b"raw"])
def test_sensitive_keys_are_blanked_whatever_their_type(content: object) -> None:
    assert run({"value": content})["value"] == "[redacted]"


def test_other_string_fields_are_scrubbed() -> None:
    out = run({"event": "declined 4111 1111 1111 1111 for a@example.com", "path": "/v1/tokens/" + NOT_LUHN})
    assert out["event"] == "declined [redacted-pan] for [redacted-email]"
    assert out["path"] == "/v1/tokens/" + NOT_LUHN


def test_non_sensitive_non_string_fields_are_kept() -> None:
    out = run({"event": "done", "count": 3, "ok": True})
    assert out == {"event": "done", "count": 3, "ok": True}


def test_card_number_in_a_nested_field_is_redacted() -> None:
    out = run({"event": "request", "body": {"card": {"pan": "4111111111111111"}}})
    assert "4111111111111111" not in repr(out)


def test_stdlib_records_are_redacted_by_the_filter() -> None:
    record = logging.LogRecord("gunicorn.error", logging.DEBUG, __file__, 1, "GET /v1/x?pan=%s&k=%s",
                               ("4111111111111111", "tvk_secret"), None)
    assert RedactingFilter().filter(record) is True
    assert record.getMessage() == "GET /v1/x?pan=[redacted-pan]&k=[redacted-key]"
