"""JSON in and out of the HTTP face with orjson, falling back to the standard library wherever they differ.

Why: the standard library's encoder and decoder were a measurable share of a single-item request's CPU
(bench/request_profile.py, issue #21). orjson gives the same values for the documents we accept and send,
except for a few cases, which go to the standard library so that behaviour does not change:
- integers beyond 64 bits: orjson reads them as floats (1e29 would silently lose digits), so a body with a
  run of 19 or more digits anywhere is parsed by `json` (a 19-digit PAN in a string takes this path too);
- NaN / Infinity and anything else orjson refuses: `json` decides (as before: accepted or a 422);
- datetimes, dataclasses and other types orjson would format its own way (Flask writes dates as HTTP
  dates) and documents orjson cannot encode: Flask's own provider, unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

__all__ = ["OrjsonProvider", "loads"]

_LONG_NUMBER = re.compile(rb"[0-9]{19}")
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def loads(raw: bytes) -> Any:
    """The document in `raw` (UTF-8 already checked), as `json.loads` would read it; ValueError if none."""
    if _LONG_NUMBER.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # json decides: same acceptance and errors as before
    return json.loads(raw.decode("utf-8"))


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider (jsonify, app.json) with orjson for the documents it encodes the same way."""

    def _fast(self, obj: Any) -> bytes | None:
        try:
            return orjson.dumps(obj, option=_OPTIONS)  # no `default`: anything unusual falls back whole
        except TypeError:  # orjson.JSONEncodeError is a TypeError: a type or value it will not write
            return None

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        fast = None if kwargs else self._fast(obj)
        return fast.decode("utf-8") if fast is not None else super().dumps(obj, **kwargs)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        fast = self._fast(obj)
        if fast is None:
            return super().response(obj)
        return self._app.response_class(fast + b"\n", mimetype=self.mimetype)
