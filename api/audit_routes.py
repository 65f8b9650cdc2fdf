"""Auditors' endpoints: read the trail with filters and cursors, verify its integrity."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request

from api.auth import current_actor
from api.routes import components, origin
from vault.audit import EventQuery
from vault.errors import ValidationFailed

__all__ = ["blueprint"]

blueprint = Blueprint("audit", __name__, url_prefix="/v1/audit")
_FILTERS = ("actor", "action", "outcome", "token", "subject_id")
_KNOWN = {*_FILTERS, "since", "until", "limit", "cursor"}


def _time(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(name, "must be an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _int(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationFailed(name, "must be a non-negative integer")
    return int(raw)


def _text(name: str) -> str | None:
    raw = request.args.get(name)
    if raw is not None and len(raw) > 128:
        raise ValidationFailed(name, "is too long")
    return raw


@blueprint.get("/events")
def events() -> tuple[Response, int]:
    unknown = set(request.args) - _KNOWN
    if unknown:
        raise ValidationFailed("query", "has an unknown parameter")
    query = EventQuery(
        since=_time("since"), until=_time("until"), after_seq=_int("cursor", 0), limit=_int("limit", 100),
        **{name: _text(name) for name in _FILTERS},
    )
    found, cursor = components().audit_log.events(current_actor(), query, origin())
    return jsonify({"events": found, "next": cursor}), 200


@blueprint.get("/verify")
def verify() -> tuple[Response, int]:
    report = components().audit_log.verify(current_actor(), origin())
    return jsonify(report.public()), 200 if report.intact else 409
