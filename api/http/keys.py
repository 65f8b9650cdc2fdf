"""Admins' key endpoints: inventory, rotation jobs (202 + progress), retirement, re-encryption."""

from __future__ import annotations

import contextlib
import re
import threading

from flask import Blueprint, Response, jsonify

from api.http.auth import current_actor
from api.http.schemas import ReencryptBody, RetireBody, RotateBody
from api.http.stepup import current_step_up, require_step_up
from api.http.tokens import components, json_body, origin, parse, requires
from api.wiring import Components
from vault.errors import ValidationFailed, VaultError

__all__ = ["blueprint"]

blueprint = Blueprint("keys", __name__, url_prefix="/v1/keys")
_JOB = re.compile(r"^job_[0-9a-f]{16}$")


def _run_in_background(parts: Components, job_id: str) -> None:
    """Work the job in this worker; if the worker dies, `tokenvault keys resume` (or /resume) finishes it."""
    def work() -> None:
        # A failure is recorded on the job (or another runner holds it); GET shows it.
        with contextlib.suppress(VaultError):
            parts.lifecycle.run(job_id)

    threading.Thread(target=work, name=f"key-job-{job_id}", daemon=True).start()


def _job_id(job_id: str) -> str:
    if not _JOB.match(job_id):
        raise ValidationFailed("job_id", "is not a job id")
    return job_id


@blueprint.get("")
def inventory() -> tuple[Response, int]:
    return jsonify(components().lifecycle.inventory(current_actor(), origin())), 200


@blueprint.get("/due")
def due() -> tuple[Response, int]:
    return jsonify({"due": components().lifecycle.due(current_actor(), origin())}), 200


@blueprint.post("/rotate")
@requires("manage_keys")
@require_step_up("manage_keys")
def rotate() -> tuple[Response, int]:
    body = parse(RotateBody, json_body())
    parts = components()
    job_id = parts.lifecycle.start_rotation(current_actor(), origin(), domain_keys_too=body.domain_keys)
    _run_in_background(parts, job_id)
    return jsonify({"job_id": job_id}), 202


@blueprint.post("/reencrypt")
@requires("manage_keys")
@require_step_up("manage_keys")
def reencrypt() -> tuple[Response, int]:
    """Compromise response: irreversible (the old key is destroyed), so a second admin approves it.

    The approval's result names the job; start it with POST /v1/keys/jobs/<id>/resume.
    """
    body = parse(ReencryptBody, json_body())
    approval = components().approvals.request(current_step_up(), "reencrypt_domain_key",
                                              {"domain_key": body.domain_key}, origin())
    return jsonify({"approval": approval.public()}), 202


@blueprint.get("/jobs/<job_id>")
def job(job_id: str) -> tuple[Response, int]:
    return jsonify(components().lifecycle.job(current_actor(), _job_id(job_id), origin())), 200


@blueprint.post("/jobs/<job_id>/resume")
def resume(job_id: str) -> tuple[Response, int]:
    parts = components()
    state = parts.lifecycle.job(current_actor(), _job_id(job_id), origin())
    if state["status"] == "running":
        _run_in_background(parts, job_id)
    return jsonify(state), 202


@blueprint.post("/retire")
@requires("manage_keys")
@require_step_up("manage_keys")
def retire() -> tuple[Response, int]:
    """Irreversible (old backups stop opening): a pending request a second admin must approve."""
    body = parse(RetireBody, json_body())
    approval = components().approvals.request(current_step_up(), "retire_kek", {"below": body.below}, origin())
    return jsonify({"approval": approval.public()}), 202
