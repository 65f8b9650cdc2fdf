"""Request bodies: UTF-8 JSON only, at most TOKENVAULT_MAX_BODY_BYTES, whatever the transfer encoding.

Werkzeug checks a Content-Length against the limit, but a chunked body it silently cuts at the limit
(`LimitedStream.readall` stops there without raising), so a padded JSON body over the limit was parsed and
served. Here the body is read from the server's stream up to one byte past the limit: one byte more is a
413, and nothing beyond that byte is read. The media type is checked before any byte is read: anything
but `application/json` (UTF-8, RFC 8259) is a 415, and so is a Content-Encoding such as gzip, which we
do not inflate (a small gzip body can expand past any limit).
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from werkzeug.exceptions import UnsupportedMediaType

from api.http import json_codec
from vault.errors import PayloadTooLarge, ValidationFailed

__all__ = ["json_body", "BodyRefused"]

_CHUNK = 64 * 1024
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


class BodyRefused(UnsupportedMediaType):
    """A 415 whose public message says what to send instead (never what was sent)."""

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


def json_body() -> Any:
    """The parsed JSON body, or 415 / 413 / 422 (`invalid_input`, field `body`) without echoing it."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BodyRefused("Content-Encoding is not supported: send the JSON body uncompressed")
    if request.mimetype != "application/json":
        raise BodyRefused("the body must be JSON with Content-Type: application/json")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise BodyRefused("the body must be UTF-8 JSON")
    raw = _read(int(current_app.config["MAX_CONTENT_LENGTH"]))
    if raw.startswith(_BOMS) or b"\x00" in raw:  # UTF-16/32 (a NUL never appears in UTF-8 JSON text)
        raise BodyRefused("the body must be UTF-8 JSON")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyRefused("the body must be UTF-8 JSON") from None
    try:
        return json_codec.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationFailed("body", "is not valid JSON") from None


def _read(limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge("body too large")
    stream = request.environ["wsgi.input"]
    wanted = declared if declared is not None else limit + 1
    chunks: list[bytes] = []
    total = 0
    while total < wanted:
        chunk = stream.read(min(_CHUNK, wanted - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        raise PayloadTooLarge("body too large")
    return b"".join(chunks)
