"""Auditors' endpoints: read the trail with filters and cursors, verify its integrity."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.http.auth import current_actor
from api.http.tokens import components, origin
from vault.audit.trail import EventQuery
from vault.clear_text import refuse_pan
from vault.errors import ValidationFailed
from vault.tokens.formats import kind_of_token
from vault.tokens.subjects import check_subject_id

__all__ = ["blueprint"]

blueprint = Blueprint("audit", __name__, url_prefix="/v1/audit")
_FILTERS = ("actor", "action", "outcome", "token", "subject_id")
_KNOWN = {*_FILTERS, "since", "until", "limit", "cursor"}
_JOB = re.compile(r"verify_[0-9a-f]{16}")


def _time(name: str) -> datetime | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # In UTC here, so a time that exists only in its own offset (0001-01-01T00:00+14:00) is refused
        # now rather than overflowing in the query (a 503 before).
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationFailed(name, "must be an ISO 8601 time") from None


def _int(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # "²".isdigit() is True, int("²") fails
        raise ValidationFailed(name, "must be a non-negative integer")
    return int(raw)


_PATTERNS = {
    "actor": re.compile(r"[A-Za-z0-9._:@-]{1,128}"),
    "action": re.compile(r"[a-z_]{1,40}"),
    "outcome": re.compile(r"allowed|denied|error"),
}


def _text(name: str) -> str | None:
    """A filter value, checked against its column's shape: a PAN or a NUL never reaches the trail."""
    raw = request.args.get(name)
    if raw is None:
        return None
    if name == "token":
        kind_of_token(raw)  # ValidationFailed for anything that is not a token, a PAN above all
        return raw
    if name == "subject_id":
        return check_subject_id(raw)
    if not _PATTERNS[name].fullmatch(raw):
        raise ValidationFailed(name, "is not a valid filter value")
    return refuse_pan(name, raw)


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


def _run_in_background(job_id: str) -> None:
    """Verification never holds a worker: it runs in a thread; a dead worker's job goes stale and restarts."""
    audit_log = components().audit_log
    threading.Thread(target=audit_log.run_job, args=(job_id,), name=f"audit-verify-{job_id}", daemon=True).start()


def _answer(found: dict[str, Any]) -> tuple[Response, int]:
    """A finished report: 200 if intact, 409 with the reason if not; a running job: 202."""
    result = found.get("result")
    if found["status"] == "running":
        response = jsonify(found)
        response.headers["Location"] = f"/v1/audit/verify/jobs/{found['job_id']}"
        return response, 202
    if found["status"] == "failed" or result is None:
        return jsonify(found), 503
    return jsonify({**result, "job": {k: v for k, v in found.items() if k != "result"}}), \
        200 if result["intact"] else 409


@blueprint.get("/verify")
def verify() -> tuple[Response, int]:
    """The latest report if fresh (at once), else a verification job: 202 and its id."""
    _kind, found = components().audit_log.verification(current_actor(), origin())
    if found.pop("start", False):
        _run_in_background(found["job_id"])
    return _answer(found)


@blueprint.get("/verify/jobs/<job_id>")
def verify_job(job_id: str) -> tuple[Response, int]:
    if not _JOB.fullmatch(job_id):
        raise ValidationFailed("job_id", "is not a verification job id")
    return _answer(components().audit_log.job(current_actor(), job_id, origin()))
