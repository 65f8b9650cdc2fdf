"""api/http/json_codec.py: orjson where it reads and writes what `json` would, `json` everywhere else."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from flask import Flask

from api.http import json_codec


@pytest.mark.parametrize("raw", [
    b'{"kind":"card","value":{"pan":"4111111111111111","exp_month":12,"exp_year":2099}}',
    b'{"items":[1,2.5,-0.0,true,null,"\\u00e9\\n"]}',
    b'{"a":1,"a":2}',  # the last duplicate wins in both
    b'123456789012345678901234567890',  # past 64 bits: orjson would read a float and lose digits
    b'[18446744073709551616]',
    b'NaN',  # orjson refuses it; json accepts it, as the vault always did (pydantic decides)
])
def test_reads_what_json_reads(raw: bytes) -> None:
    got, expected = json_codec.loads(raw), json.loads(raw.decode())
    assert repr(got) == repr(expected)
    assert type(got) is type(expected)


@pytest.mark.parametrize("raw", [b"{", b'{"a":}', b"[1,]"])
def test_refuses_what_json_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        json_codec.loads(raw)


def test_writes_dates_and_unusual_documents_as_flask_did() -> None:
    app = Flask("test")
    app.json = json_codec.OrjsonProvider(app)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with app.app_context():
        assert app.json.dumps({"at": moment}) == '{"at": "Fri, 02 Jan 2026 03:04:05 GMT"}'
        assert json.loads(app.json.dumps({1: "int key"})) == {"1": "int key"}
        assert json.loads(app.json.dumps([2**70])) == [2**70]
        response = app.json.response({"token": "tok_1", "n": 1})
        assert response.get_data() == b'{"token":"tok_1","n":1}\n'
        assert response.mimetype == "application/json"
