"""A wrapper that keeps secrets out of reprs, logs and tracebacks."""

from __future__ import annotations

from typing import Generic, NoReturn, TypeVar

__all__ = ["Secret"]

T = TypeVar("T")


class Secret(Generic[T]):
    """Holds a secret value; read it only through `expose()`.

    repr/str are redacted and pickling is refused, so a secret cannot leak by
    being printed, logged, or sent to another process by accident.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def expose(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**redacted**')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("secrets cannot be pickled")

    def __eq__(self, other: object) -> bool:
        import hmac

        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, bytes) and isinstance(b, bytes):
            return hmac.compare_digest(a, b)
        if isinstance(a, str) and isinstance(b, str):
            return hmac.compare_digest(a.encode(), b.encode())
        return bool(a == b)

    # Equal by value but unhashable: a secret must never become a set member or dict key.
    __hash__ = None  # type: ignore[assignment]
