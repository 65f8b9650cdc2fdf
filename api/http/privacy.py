"""Privacy officers' endpoints: subjects, rights, holds, requests and legal disclosures."""

from __future__ import annotations

import re

from flask import Blueprint, Response, jsonify, request

from api.http.auth import current_actor
from api.http.schemas import (
    CloseRequestBody,
    ConsentsBody,
    CorrectBody,
    DisclosureBody,
    HoldBody,
    RequestBody,
    RestrictionBody,
    TransferBody,
)
from api.http.stepup import current_step_up, require_step_up
from api.http.tokens import components, json_body, origin, parse, requires
from vault.errors import ValidationFailed
from vault.privacy.transfer import recipient_fingerprint
from vault.tokens.subjects import check_subject_id

__all__ = ["blueprint"]

blueprint = Blueprint("privacy", __name__, url_prefix="/v1")
_ID = re.compile(r"^[a-z]{3,5}_[0-9a-f]{16}$")


def _subject(subject_id: str) -> str:
    return check_subject_id(subject_id)


def _id(name: str, value: str) -> str:
    if not _ID.match(value):
        raise ValidationFailed(name, "is not an id")
    return value


@blueprint.patch("/tokens/<path:token>")
@requires("correct")
@require_step_up("correct")
def correct_token(token: str) -> tuple[Response, int]:
    """Rectification (GDPR Art. 16): new value, same token; lists who must be told (Art. 19)."""
    body = parse(CorrectBody, json_body())
    record, recipients = components().privacy.correct(current_step_up(), token, body.value, origin())
    return jsonify({**record.public(), "recipients_to_notify": recipients}), 200


@blueprint.get("/subjects/<subject_id>")
def view_subject(subject_id: str) -> tuple[Response, int]:
    return jsonify(components().privacy.view(current_actor(), _subject(subject_id), origin())), 200


@blueprint.get("/subjects/<subject_id>/export")
def export_subject(subject_id: str) -> tuple[Response, int]:
    return jsonify(components().privacy.export(current_actor(), _subject(subject_id), origin())), 200


@blueprint.delete("/subjects/<subject_id>")
@require_step_up("manage_subjects")
def erase_subject(subject_id: str) -> tuple[Response, int]:
    return jsonify(components().privacy.erase(current_actor(), _subject(subject_id), origin())), 200


@blueprint.post("/subjects/<subject_id>/minor")
@require_step_up("manage_subjects")
def mark_minor(subject_id: str) -> tuple[Response, int]:
    return jsonify(components().privacy.mark_minor(current_actor(), _subject(subject_id), origin())), 200


@blueprint.put("/subjects/<subject_id>/restriction")
@requires("manage_subjects")
def restrict(subject_id: str) -> tuple[str, int]:
    body = parse(RestrictionBody, json_body())
    components().privacy.restrict(current_actor(), _subject(subject_id), body.restricted, origin())
    return "", 204


@blueprint.put("/subjects/<subject_id>/consents")
@requires("manage_consents")
def consents(subject_id: str) -> tuple[Response, int]:
    body = parse(ConsentsBody, json_body())
    choices = body.model_dump(exclude_none=True, exclude={"source"})
    if not choices:
        raise ValidationFailed("body", "must set at least one consent")
    actor = current_actor()
    source = f"{actor.id}:{body.source}" if body.source else actor.id
    return jsonify(components().privacy.set_consents(actor, _subject(subject_id), choices, source, origin())), 200


@blueprint.post("/subjects/<subject_id>/holds")
@requires("manage_subjects")
def add_hold(subject_id: str) -> tuple[Response, int]:
    body = parse(HoldBody, json_body())
    found = components().privacy.add_hold(current_actor(), _subject(subject_id), body.reason, body.until, origin())
    return jsonify(found), 201


@blueprint.delete("/subjects/<subject_id>/holds/<hold_id>")
@require_step_up("manage_subjects")
def release_hold(subject_id: str, hold_id: str) -> tuple[Response, int]:
    """Ask to lift a hold; a second officer approves it (POST /v1/approvals/<id>/approve)."""
    params = {"subject_id": _subject(subject_id), "hold_id": _id("hold_id", hold_id)}
    approval = components().approvals.request(current_step_up(), "release_hold", params, origin())
    return jsonify({"approval": approval.public()}), 202


@blueprint.post("/subjects/<subject_id>/requests")
@requires("manage_subjects")
def register_request(subject_id: str) -> tuple[Response, int]:
    body = parse(RequestBody, json_body())
    return jsonify(components().privacy.register_request(current_actor(), _subject(subject_id), body.right,
                                                         origin())), 201


@blueprint.post("/privacy/requests/<request_id>/close")
@requires("manage_subjects")
def close_request(request_id: str) -> tuple[str, int]:
    body = parse(CloseRequestBody, json_body())
    components().privacy.close_request(current_actor(), _id("request_id", request_id), body.outcome, origin())
    return "", 204


@blueprint.get("/privacy/requests")
def open_requests() -> tuple[Response, int]:
    raw = request.args.get("due_within_days")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) < 5):
        raise ValidationFailed("due_within_days", "must be a whole number of days")
    days = int(raw) if raw is not None else None
    return jsonify({"requests": components().privacy.requests_due(current_actor(), origin(), days)}), 200


@blueprint.post("/disclosures")
@requires("disclose")
@require_step_up("disclose")
def request_disclosure() -> tuple[Response, int]:
    body = parse(DisclosureBody, json_body())
    found = components().disclosures.request(
        current_actor(), subject_id=body.subject_id, token_list=body.tokens, case_reference=body.case_reference,
        authority=body.authority, justification=body.justification, origin=origin())
    return jsonify(found), 202


@blueprint.post("/disclosures/<disclosure_id>/approve")
@require_step_up("disclose")
def approve_disclosure(disclosure_id: str) -> tuple[Response, int]:
    return jsonify(components().disclosures.approve(current_actor(), _id("disclosure_id", disclosure_id),
                                                           origin())), 200


@blueprint.post("/disclosures/<disclosure_id>/collect")
@require_step_up("disclose")
def collect_disclosure(disclosure_id: str) -> tuple[Response, int]:
    return jsonify(components().disclosures.collect(current_actor(), _id("disclosure_id", disclosure_id),
                                                           origin())), 200


@blueprint.post("/transfers")
@requires("export")
@require_step_up("export")
def request_transfer() -> tuple[Response, int]:
    """Ask for a business transfer; a second officer approves it, then `tokenvault transfer export --approval`."""
    body = parse(TransferBody, json_body())
    params = {"subjects": ",".join(_subject(s) for s in body.subjects),
              "recipient": recipient_fingerprint(body.recipient_public_key.encode())}
    approval = components().approvals.request(current_step_up(), "transfer_export", params, origin())
    return jsonify({"approval": approval.public()}), 202
