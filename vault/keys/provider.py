"""The KeyProvider protocol: the only way TokenVault touches a key-encryption key.

KEKs never leave the provider. Callers hand it small keys (domain keys) to wrap and
get back an opaque string `<provider>:v<version>:<base64>`, in the same shape as a
Vault Transit ciphertext, so the KEK version of any wrapped key is readable
without the provider.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from vault.errors import DecryptionFailed
from vault.secret import Secret

__all__ = ["KekInfo", "KeyProvider", "wrapped_version", "KEY_BYTES"]

KEY_BYTES = 32

_WRAPPED = re.compile(r"^[a-z]+:v([0-9]{1,9}):[A-Za-z0-9+/=]+$")


def wrapped_version(wrapped: str) -> int:
    """KEK version a wrapped key was made with; raises DecryptionFailed if malformed."""
    match = _WRAPPED.match(wrapped)
    if match is None:
        raise DecryptionFailed()
    return int(match.group(1))


@dataclass(frozen=True)
class KekInfo:
    """What an admin may know about the KEK: versions and policy, never material."""

    provider: str
    key_name: str
    latest_version: int
    min_decryption_version: int
    versions: dict[int, datetime]


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps, unwraps and rewraps keys under a KEK it never reveals.

    Batch methods answer item by item in input order: a `None` marks an item that
    could not be processed (malformed, tampered, or below the minimum decryption
    version). A provider that cannot be reached, is sealed or denies us raises
    `KeyServiceUnavailable` for the whole call.
    """

    name: str

    @property
    def calls(self) -> int:
        """How many round trips to the key service so far (for benchmarks)."""
        ...

    def initialise(self) -> bool:
        """Create the KEK if missing (idempotent); True if it was created.

        Refuses (ConfigurationError) when an existing key is unsafe, e.g. exportable.
        """
        ...

    def generate(self) -> tuple[Secret[bytes], str]:
        """A fresh random 256-bit key and its wrapped form."""
        ...

    def wrap(self, keys: Sequence[Secret[bytes]]) -> list[str]: ...

    def unwrap(self, wrapped: Sequence[str]) -> list[Secret[bytes] | None]: ...

    def rewrap(self, wrapped: Sequence[str]) -> list[str | None]:
        """Re-encrypt under the latest KEK version without exposing plaintext."""
        ...

    def rotate(self) -> int:
        """Create a new KEK version and return it."""
        ...

    def info(self) -> KekInfo: ...

    def set_min_decryption_version(self, version: int) -> None:
        """Make versions below `version` unusable for unwrapping."""
        ...

    def destroy_versions_below(self, version: int) -> None:
        """Destroy KEK versions below `version` for good (erasure epochs): no setting brings them back.

        Also raises the minimum decryption (and encryption) version to `version`. Idempotent.
        """
        ...

    def check(self) -> None:
        """Raise KeyServiceUnavailable unless the provider can serve requests now."""
        ...
