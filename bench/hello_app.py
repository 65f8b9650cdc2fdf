"""The ceiling for bench/run_http.py: the least a Flask JSON POST can cost under our server settings.

`POST /echo` parses a small JSON body and sends it back; `GET /healthz` answers readiness.
run_http.py serves it with `python -m api.http.server` (the same server, worker count, threads,
keep-alive and limits as `tokenvault serve`), so the only difference from the vault is the vault's own work.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request

app = Flask("hello")


@app.post("/echo")
def echo() -> tuple[Any, int]:
    return jsonify({"echo": request.get_json()}), 200


@app.get("/healthz")
def healthz() -> Any:
    return jsonify({"status": "ok"})
