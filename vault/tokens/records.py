"""What the token service takes and gives: requests, records as shown, detokenized items, limits.

Plain values with no behaviour beyond how a record is shown, so the HTTP face, the privacy use
cases and transfers can name them without reaching into the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vault.errors import VaultError

__all__ = ["Detokenized", "Limits", "TokenRecord", "TokenRequest", "purpose_of_kind"]


@dataclass(frozen=True)
class Limits:
    cvv_ttl_default: int = 600
    cvv_ttl_max: int = 3600
    ttl_max: int = 10 * 365 * 24 * 3600
    batch_max: int = 1000
    purge_interval: float = 30.0


@dataclass(frozen=True)
class TokenRequest:
    kind: str
    value: Any
    subject_id: str | None = None
    deterministic: bool = False
    ttl_seconds: int | None = None
    reference: str | None = None  # e.g. an order id: kept for tax after erasure
    token: str | None = None  # set only when importing a transfer bundle: keep the acquirer's tokens


@dataclass(frozen=True)
class TokenRecord:
    token: str
    kind: str
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime | None
    subject_id: str | None = None

    def public(self, *, created: bool = True) -> dict[str, Any]:
        """The record as shown; tokenize answers pass `created=False`: a deterministic token's age
        would tell the caller whether the value was already in the vault."""
        times = {"created_at": _iso(self.created_at)} if created else {}
        return {
            "token": self.token,
            "kind": self.kind,
            "metadata": {**self.metadata, **times, "expires_at": _iso(self.expires_at)},
            "expires_at": _iso(self.expires_at),
        }


@dataclass(frozen=True)
class Detokenized:
    token: str
    value: Any = None
    error: VaultError | None = None
    kind: str | None = None
    view: str | None = None  # vault.access.policy.shown_view: names the value's shape


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def purpose_of_kind(kind: str) -> str:
    """CVVs live under their own domain key (PCI DSS 3.3.2); everything else under `data`."""
    return "cvv" if kind == "cvv" else "data"
