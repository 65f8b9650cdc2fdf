"""How many card tokens may keep one BIN, so that guessing a `keep_bin` token stays pointless.

With `keep_bin`, a token of length L keeps the PAN's first six and last four digits and draws the
L - 10 between them. A guesser who fixes a BIN ranges over those digits and every last four: 10^(L-6)
numbers, 9 in 10 of them possible tokens (a token fails Luhn). With N live tokens of that BIN and
length, the expected number of guesses to the first hit is 0.9 x 10^(L-6) / N. The guessing guard
(vault/access/guessing.py) lets one client miss at most `per_day` times a day, so one year of
guessing per API key is expected while

    N <= cap(L) = 0.9 x 10^(L-6) / (365 x per_day)      (246,575 for 16 digits at 100 a day)

A BIN therefore keeps its digits in at most cap(L) tokens of length L; every later token of that BIN
and length draws its first six digits at random like any other (its metadata still names the BIN,
which PCI DSS allows in clear). Counted per (BIN, length) in `bin_counts`, in the tokenize
transaction, and never decremented: deleted or expired tokens do not free a place, which only errs
towards fewer guessable tokens. See threat_model/README.md, "Guessing card tokens: the arithmetic".
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.engine import Connection

from vault.storage.schema import bin_counts, insert_ignoring_conflict

__all__ = ["bin_cap", "BinCounts", "KEEP_BIN_MIN_LENGTH"]

KEEP_BIN_MIN_LENGTH = 16  # shorter PANs never keep their BIN (too few random digits left)
_DAYS = 365


def bin_cap(length: int, per_day: int) -> int:
    """Most tokens of `length` digits that may keep one BIN, at `per_day` misses a day per client."""
    return int(9 * 10 ** (length - 7)) // (_DAYS * per_day)


class BinCounts:
    def __init__(self, per_day: int) -> None:
        self._per_day = per_day

    def claim(self, conn: Connection, pan: str) -> bool:
        """True (and counted) if a new token for `pan` may keep its BIN; False once the BIN is full."""
        if len(pan) < KEEP_BIN_MIN_LENGTH:
            return False
        cap = bin_cap(len(pan), self._per_day)
        key = {"bin": pan[:6], "length": len(pan)}
        # The row lock of this UPDATE orders concurrent claims of one BIN (PostgreSQL re-checks `issued < cap`).
        counted = update(bin_counts).where(bin_counts.c.bin == key["bin"], bin_counts.c.length == key["length"],
                                           bin_counts.c.issued < cap).values(issued=bin_counts.c.issued + 1)
        if conn.execute(counted).rowcount == 1:
            return True
        if cap < 1:
            return False
        created = conn.execute(insert_ignoring_conflict(conn, bin_counts).returning(bin_counts.c.bin),
                               [{**key, "issued": 1}]).first()
        if created is not None:
            return True
        return conn.execute(counted).rowcount == 1  # another transaction created the row meanwhile
