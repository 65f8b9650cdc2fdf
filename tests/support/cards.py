"""Many distinct cards for rotation tests: tokenize them, and check every one reads back."""

from __future__ import annotations

from api.wiring import Components
from vault.audit.trail import Actor, Origin
from vault.tokens.cards import luhn_valid
from vault.tokens.records import TokenRecord, TokenRequest

CHECKOUT = Actor(id="cli_checkout", role="checkout")
GATEWAY = Actor(id="cli_gateway", role="payment_gateway")
HERE = Origin(request_id="req-1", source="127.0.0.1", user_agent="pytest")


def luhn_pan(number: int) -> str:
    """A distinct, Luhn-valid 16-digit Visa number for each `number`."""
    body = f"4{number:014d}"
    return next(body + digit for digit in "0123456789" if luhn_valid(body + digit))


def fill(parts: Components, count: int, subjects: int = 100) -> dict[str, str]:
    """`count` cards in batches of 1,000, every other one under one of `subjects` subjects; token -> PAN."""
    out: dict[str, str] = {}
    for start in range(0, count, 1000):
        batch = [TokenRequest(kind="card", value={"pan": luhn_pan(i), "exp_month": 1 + i % 12, "exp_year": 2099},
                              subject_id=f"cust-{i % subjects}" if i % 2 else None)
                 for i in range(start, min(start + 1000, count))]
        for request, result in zip(batch, parts.tokens.tokenize(CHECKOUT, batch, HERE), strict=True):
            assert isinstance(result, TokenRecord), result
            out[result.token] = request.value["pan"]
    assert len(out) == count
    return out


def read_all(parts: Components, expected: dict[str, str]) -> None:
    items = list(expected)
    for start in range(0, len(items), 1000):
        for result in parts.tokens.detokenize(GATEWAY, items[start:start + 1000], "payment", HERE):
            assert result.error is None, (result.token, result.error)
            assert result.value["pan"] == expected[result.token]
