"""Operators' passwords, hashed with argon2id (RFC 9106).

The cost is a setting so that tests can use tiny parameters; the default is the RFC's
second recommended option (64 MiB, 3 passes, 4 lanes), about 100 ms a hash here. An
unknown username still costs one full verification, so timing does not tell which
usernames exist.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from vault.errors import ConfigurationError, ValidationFailed
from vault.secret import Secret

__all__ = ["Argon2Params", "Passwords", "MIN_LENGTH", "MAX_LENGTH"]

MIN_LENGTH = 12
MAX_LENGTH = 256


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    def __post_init__(self) -> None:
        if self.time_cost < 1 or self.parallelism < 1 or self.memory_kib < 8 * self.parallelism:
            raise ConfigurationError("argon2 parameters out of range")


class Passwords:
    """Hashes and verifies passwords; never keeps or logs one."""

    def __init__(self, params: Argon2Params = Argon2Params()) -> None:
        self._hasher = PasswordHasher(time_cost=params.time_cost, memory_cost=params.memory_kib,
                                      parallelism=params.parallelism, hash_len=32, salt_len=16, type=Type.ID)
        # Verified against when the account does not exist, to spend the same time; made on first use.
        self._decoy: str | None = None

    @staticmethod
    def generate() -> Secret[str]:
        """A random password (144 bits), for operators created without one."""
        return Secret(secrets.token_urlsafe(18))

    @staticmethod
    def check_rules(password: Secret[str]) -> None:
        if not MIN_LENGTH <= len(password.expose()) <= MAX_LENGTH:
            raise ValidationFailed("password", f"must be {MIN_LENGTH} to {MAX_LENGTH} characters")

    def hash(self, password: Secret[str]) -> str:
        return self._hasher.hash(password.expose())

    def verify(self, stored: str | None, password: Secret[str]) -> bool:
        """True only if `stored` exists and matches; a missing hash costs a decoy verification."""
        candidate = password.expose()
        if len(candidate) > MAX_LENGTH:
            return False
        if stored is None and self._decoy is None:
            self._decoy = self._hasher.hash(secrets.token_urlsafe(16))
        try:
            return self._hasher.verify(stored or self._decoy or "", candidate) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """After the cost setting changed, the next successful login rehashes."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
