"""Structured JSON logs with a redaction processor as the last line of defence.

Code never logs values on purpose; this processor also scrubs anything that looks
like a card number (Luhn-valid digit runs), an email address or a credential, and
drops fields named after secrets, in case one slips through.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from vault.clear_text import redact_pans

__all__ = ["configure", "redact", "get_logger", "server_log_config", "RedactingFilter"]

_SENSITIVE_KEYS = {"value", "values", "pan", "cvv", "password", "api_key", "authorization", "totp", "secret",
                   "token_value", "plaintext"}
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_API_KEY = re.compile(r"tvk_[A-Za-z0-9_-]+")


def redact_text(text: str) -> str:
    """The vault's one PAN detector (vault.tokens.cards), then emails and API keys."""
    text = redact_pans(text)
    text = _EMAIL.sub("[redacted-email]", text)
    return _API_KEY.sub("[redacted-key]", text)


def _redact_value(key: str, value: Any) -> Any:
    if key.lower() in _SENSITIVE_KEYS:
        return "[redacted]"
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, item) for item in value]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub every field, nested ones included."""
    for key in list(event):
        event[key] = _redact_value(key, event[key])
    return event


def _dumps(event: Any, **_options: Any) -> str:
    """One log line with orjson (every request writes one: issue #21); `json` for what orjson refuses."""
    try:
        return orjson.dumps(event, default=repr).decode("utf-8")
    except TypeError:  # non-string keys, integers past 64 bits
        return json.dumps(event, default=repr)


def configure(level: str = "info") -> None:
    """JSON lines on stderr, for our own logs and for stdlib loggers (the server, Flask)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    structlog.configure(
        # The timestamp after `redact`: the clock's own text, never data, and a 12-digit run that every
        # line would otherwise test for a card number (issue #21). Every other field is still redacted.
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, redact,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(serializer=_dumps)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class RedactingFilter(logging.Filter):
    """Redacts stdlib log records (a server's own lines may include raw request paths at debug level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_text(record.getMessage())
        record.args = ()
        return True


def server_log_config() -> dict[str, Any]:
    """granian's own log lines (its `_granian` logger, and the access log we keep off) pass the same redaction."""
    stream = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "filters": ["redact"]}
    return {
        "filters": {"redact": {"()": RedactingFilter}},
        "handlers": {"console": {**stream, "formatter": "generic"}, "access": {**stream, "formatter": "access"}},
    }
