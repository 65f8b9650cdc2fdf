"""keep_bin without a guessable BIN: a BIN keeps its digits only in as many tokens as a year of guessing allows.

Issue #19: with `keep_bin = true` a 16-digit token has 6 random digits, so a BIN holding more than about
246,000 tokens fell below one year of guessing per API key (threat_model/README.md has the arithmetic).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from api.wiring import Components
from tests.support.cards import CHECKOUT, HERE, luhn_pan
from vault.access.guessing import GuessingGuard, GuessingLimits
from vault.access.policy import load_policy
from vault.keys.row_mac import RowMacs
from vault.tokens.bins import bin_cap
from vault.tokens.records import TokenRecord, TokenRequest
from vault.tokens.service import TokenService

YEAR = 365


def keep_bin_service(parts: Components, tmp_path: Path, per_day: int) -> TokenService:
    policy = tmp_path / "policy.toml"
    policy.write_text(resources.files("vault.access").joinpath("policy.toml").read_text()
                      .replace("keep_bin = false", "keep_bin = true"))
    guard = GuessingGuard(parts.trail, RowMacs(parts.keys), GuessingLimits(per_day=per_day))
    return TokenService(engine=parts.engine, keys=parts.keys, policy=load_policy(policy), trail=parts.trail,
                        guessing=guard)


def cards(numbers: range) -> list[TokenRequest]:
    return [TokenRequest(kind="card", value={"pan": luhn_pan(n), "exp_month": 12, "exp_year": 2099}) for n in numbers]


def test_the_cap_leaves_a_year_of_guessing_per_key_for_every_length() -> None:
    """Expected guesses to the first hit = candidates per BIN / tokens keeping it >= a year of allowed misses."""
    per_day = GuessingLimits().per_day
    assert bin_cap(16, per_day) == 246_575
    for length in range(16, 20):
        candidates = 9 * 10 ** (length - 7)  # 10^(L-6) digit strings after the BIN, 9 in 10 fail Luhn
        assert candidates / bin_cap(length, per_day) >= YEAR * per_day


def test_a_full_bin_stops_keeping_its_digits(components: Components, tmp_path: Path) -> None:
    # A guard that allowed 8.2 million misses a day would leave room for 3 tokens per 16-digit BIN.
    per_day = 9 * 10**9 // (YEAR * 3)
    service = keep_bin_service(components, tmp_path, per_day)
    first = service.tokenize(CHECKOUT, cards(range(1, 3)), HERE)
    rest = service.tokenize(CHECKOUT, cards(range(3, 7)), HERE)  # one batch crossing the cap
    records = [r for r in [*first, *rest] if isinstance(r, TokenRecord)]
    assert len(records) == 6
    assert all(r.metadata["bin"] == "400000" for r in records)  # the metadata still names the BIN
    kept = [r.token.startswith("400000") for r in records]
    assert kept == [True, True, True, False, False, False]
    other_bin = service.tokenize(CHECKOUT, [TokenRequest(kind="card", value={
        "pan": "5105105105105100", "exp_month": 12, "exp_year": 2099})], HERE)[0]
    assert isinstance(other_bin, TokenRecord) and other_bin.token.startswith("510510")


def test_deleted_tokens_do_not_free_a_place(components: Components, tmp_path: Path) -> None:
    service = keep_bin_service(components, tmp_path, 9 * 10**9 // (YEAR * 1))
    first = service.tokenize(CHECKOUT, cards(range(1, 2)), HERE)[0]
    assert isinstance(first, TokenRecord) and first.token.startswith("400000")
    service.delete(CHECKOUT, first.token, HERE)
    again = service.tokenize(CHECKOUT, cards(range(2, 3)), HERE)[0]
    assert isinstance(again, TokenRecord) and not again.token.startswith("400000")
