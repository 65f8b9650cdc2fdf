"""Reading Transit's HTTP answers: batch results, wrapped-key shapes, key metadata.

Pure functions, no I/O: each turns a response into values or raises the provider's
`KeyServiceUnavailable` with a message that never holds key material.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys.provider import wrapped_version

T = TypeVar("T")
BATCH_LIMIT = 250
_PREFIX = "vault:"


def _data(response: object, what: str) -> dict[str, Any]:
    """The `data` object of a Vault JSON response, or KeyServiceUnavailable."""
    if isinstance(response, dict):
        data = response.get("data")
        if isinstance(data, dict):
            return data
    raise KeyServiceUnavailable(f"vault {what}: unexpected response")


def _batch_results(response: object, expected: int, what: str) -> list[dict[str, Any]]:
    results = _data(response, what).get("batch_results")
    if not isinstance(results, list) or len(results) != expected or not all(isinstance(r, dict) for r in results):
        raise KeyServiceUnavailable(f"vault {what}: unexpected batch response")
    return results


def _item_ok(item: Mapping[str, Any], field: str) -> str | None:
    """The item's field if the item succeeded; None for a per-item error."""
    if item.get("error"):
        return None
    value = item.get(field)
    return value if isinstance(value, str) and value else None


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[start : start + BATCH_LIMIT] for start in range(0, len(items), BATCH_LIMIT)]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _well_formed(wrapped: str) -> bool:
    """Client-side screen so malformed items never reach Vault (they would fail the batch)."""
    if not isinstance(wrapped, str) or not wrapped.startswith(_PREFIX):
        return False
    try:
        wrapped_version(wrapped)
    except DecryptionFailed:
        return False
    return True


def _created_at(value: object) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _int(data: Mapping[str, Any], field: str, what: str) -> int:
    value = data.get(field)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise KeyServiceUnavailable(f"vault {what}: response lacks {field}")


# -- provider ------------------------------------------------------------------------
