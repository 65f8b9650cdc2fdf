"""The /v1 endpoints: parse, call the vault, shape the answer. No domain logic here."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from api.http.auth import current_actor
from api.http.bodies import json_body
from api.http.errors import error_body
from api.http.metrics import OPERATIONS
from api.http.schemas import BatchBody, DetokenizeBody, TokenizeBody
from api.wiring import Components
from vault.audit.trail import Origin
from vault.clear_text import redact_pans
from vault.errors import ValidationFailed, VaultError
from vault.tokens.kinds import validation_failed
from vault.tokens.records import TokenRecord, TokenRequest

__all__ = ["blueprint", "components", "origin", "json_body"]

blueprint = Blueprint("v1", __name__, url_prefix="/v1")
Model = TypeVar("Model", bound=BaseModel)


def components() -> Components:
    found: Components = current_app.extensions["tokenvault"]
    return found


def origin() -> Origin:
    agent = request.headers.get("User-Agent")
    return Origin(request_id=g.get("request_id"), source=request.remote_addr,
                  user_agent=None if agent is None else redact_pans(agent))


View = TypeVar("View", bound=Callable[..., Any])


def requires(operation: str) -> Callable[[View], View]:
    """Refuse (403, audited) a role the policy never grants `operation`, before the body is read."""
    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            components().tokens.authorise(current_actor(), operation, operation, origin())
            return view(*args, **kwargs)
        return guarded  # type: ignore[return-value]
    return decorate



def parse(model: type[Model], data: Any, prefix: tuple[Any, ...] = ()) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, prefix) from None


def _count(operation: str, outcomes: Iterable[tuple[str | None, VaultError | None]]) -> None:
    """Per-item outcomes into the operations counter; one update per (kind, outcome), not per item."""
    role = current_actor().role
    tally = Counter((kind or "unknown", "allowed" if error is None else error.code) for kind, error in outcomes)
    for (kind, outcome), count in tally.items():
        OPERATIONS.labels(operation, kind, role, outcome).inc(count)


def _request_of(body: TokenizeBody) -> TokenRequest:
    return TokenRequest(kind=body.kind, value=body.value, subject_id=body.subject_id,
                        deterministic=body.deterministic, ttl_seconds=body.ttl_seconds, reference=body.reference)


@blueprint.post("/tokens")
@requires("tokenize")
def tokenize() -> tuple[Response, int]:
    body = parse(TokenizeBody, json_body())
    result = components().tokens.tokenize(current_actor(), [_request_of(body)], origin())[0]
    _count("tokenize", [(body.kind, result if isinstance(result, VaultError) else None)])
    if isinstance(result, VaultError):
        raise result
    return jsonify(result.public(created=False)), 201


@blueprint.post("/tokens/batch")
@requires("tokenize")
def tokenize_batch() -> tuple[Response, int]:
    body = parse(BatchBody, json_body())
    results: list[TokenRecord | VaultError | None] = [None] * len(body.items)
    requests, positions = [], []
    for index, item in enumerate(body.items):
        try:
            requests.append(_request_of(parse(TokenizeBody, item, ("items", index))))
            positions.append(index)
        except ValidationFailed as error:
            results[index] = error
    if requests:
        outcomes: list[tuple[str | None, VaultError | None]] = []
        for index, result in zip(positions, components().tokens.tokenize(current_actor(), requests, origin()),
                                 strict=True):
            results[index] = result
            outcomes.append((body.items[index].get("kind"), None) if isinstance(result, TokenRecord) else
                            (None, result if isinstance(result, VaultError) else None))
        _count("tokenize", outcomes)
    return jsonify({"results": [
        r.public(created=False) if isinstance(r, TokenRecord) else {"error": error_body(r)}
        for r in results if r is not None
    ]}), 200


@blueprint.post("/detokenize")
@requires("detokenize")
def detokenize() -> tuple[Response, int]:
    body = parse(DetokenizeBody, json_body())
    current_app.extensions["tokenvault.item_quota"](len(body.tokens))  # api.http.ratelimits: values, not requests
    results = components().tokens.detokenize(current_actor(), body.tokens, body.purpose, origin())
    _count("detokenize", [(result.kind, result.error) for result in results])
    return jsonify({"results": [
        {"token": r.token or None, "error": error_body(r.error)} if r.error else
        {"token": r.token, "kind": r.kind, "view": r.view, "value": r.value}
        for r in results
    ]}), 200


@blueprint.get("/tokens/<path:token>")
def read_metadata(token: str) -> tuple[Response, int]:
    record = components().tokens.metadata(current_actor(), token, origin())
    return jsonify(record.public()), 200


@blueprint.delete("/tokens/<path:token>")
def delete_token(token: str) -> tuple[str, int]:
    components().tokens.delete(current_actor(), token, origin())
    return "", 204
