"""Business transfer (privacy policy: "handled lawfully"): chosen subjects, sealed for one acquirer.

A bundle is hybrid public-key encryption from `cryptography`: an ephemeral X25519 key
agreement with the recipient's public key, HKDF-SHA256 to an AES-256-GCM key, and the
manifest (subjects, counts, time) as associated data, so it cannot be altered or read
without the recipient's private key. Import keeps the tokens, so the acquirer's systems
keep working, and re-encrypts everything under the importing vault's own keys.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.errors import DecryptionFailed, Forbidden, ValidationFailed
from vault.storage.schema import approvals, audit_events, consents, tokens
from vault.tokens.formats import kind_of_token
from vault.tokens.records import TokenRecord, TokenRequest
from vault.tokens.service import TokenService

__all__ = ["TransferService", "seal_bundle", "open_bundle", "FORMAT"]

FORMAT = "tokenvault-transfer-1"
_INFO = b"tokenvault transfer bundle v1"
_SUBJECT = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _key(shared: bytes, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(shared)


def _aad(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def recipient_fingerprint(public_pem: bytes) -> str:
    """SHA-256 of the recipient's raw X25519 key: what a second officer approves."""
    try:
        key = serialization.load_pem_public_key(public_pem)
    except ValueError:
        raise ValidationFailed("recipient_public_key", "is not a PEM public key") from None
    if not isinstance(key, X25519PublicKey):
        raise ValidationFailed("recipient_public_key", "must be an X25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def check_transfer_params(_conn: Connection, params: dict[str, Any]) -> None:
    """For the approval request: a short list of subject ids and a key fingerprint."""
    subjects = str(params.get("subjects", ""))
    if not subjects or any(not _SUBJECT.fullmatch(s) for s in subjects.split(",")):
        raise ValidationFailed("subjects", "must be comma-separated subject ids")
    if not re.fullmatch(r"[0-9a-f]{64}", str(params.get("recipient", ""))):
        raise ValidationFailed("recipient", "must be the recipient key's SHA-256 fingerprint")


def seal_bundle(payload: dict[str, Any], manifest: dict[str, Any], recipient_public_pem: bytes) -> dict[str, Any]:
    try:
        recipient = serialization.load_pem_public_key(recipient_public_pem)
    except ValueError:
        raise ValidationFailed("recipient_public_key", "is not a PEM public key") from None
    if not isinstance(recipient, X25519PublicKey):
        raise ValidationFailed("recipient_public_key", "must be an X25519 public key")
    ephemeral = X25519PrivateKey.generate()
    salt, nonce = secrets.token_bytes(32), secrets.token_bytes(12)
    manifest = {**manifest, "format": FORMAT, "salt": _b64(salt), "ephemeral_public_key": _b64(
        ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))}
    key = _key(ephemeral.exchange(recipient), salt)
    ciphertext = AESGCM(key).encrypt(nonce, json.dumps(payload).encode(), _aad(manifest))
    return {"manifest": manifest, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}


def open_bundle(bundle: dict[str, Any], private_pem: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and payload; DecryptionFailed for a wrong key or any alteration."""
    try:
        private = serialization.load_pem_private_key(private_pem, password=None)
        manifest = bundle["manifest"]
        if not isinstance(private, X25519PrivateKey) or manifest.get("format") != FORMAT:
            raise DecryptionFailed()
        peer = X25519PublicKey.from_public_bytes(base64.b64decode(manifest["ephemeral_public_key"]))
        key = _key(private.exchange(peer), base64.b64decode(manifest["salt"]))
        plaintext = AESGCM(key).decrypt(base64.b64decode(bundle["nonce"]), base64.b64decode(bundle["ciphertext"]),
                                        _aad(manifest))
        return manifest, json.loads(plaintext)
    except (KeyError, TypeError, ValueError, InvalidTag):
        raise DecryptionFailed() from None


def _now() -> datetime:
    return datetime.now(UTC)


class TransferService(AuditedOperations):
    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, tokens_service: TokenService,
                 clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._tokens = tokens_service

    def _check_approval(self, conn: Connection, approval_id: str, subject_ids: Sequence[str],
                        recipient: str) -> None:
        """Dual control: an executed `transfer_export` approval for exactly these subjects and this key, unused."""
        # Used once: the approval row stays locked until commit, so a second export with it
        # waits here and then finds the first one's audit event.
        row = conn.execute(select(approvals).where(approvals.c.id == approval_id).with_for_update()
                           ).mappings().first()
        params = json.loads(row["params"]) if row else {}
        if (row is None or row["action"] != "transfer_export" or row["status"] != "executed"
                or params.get("subjects") != ",".join(subject_ids) or params.get("recipient") != recipient):
            raise Forbidden("no approved transfer for these subjects and this recipient")
        used = conn.execute(select(audit_events.c.seq).where(
            audit_events.c.action == "transfer_export", audit_events.c.outcome == "allowed",
            audit_events.c.detail.like(f"approval={approval_id} %"))).first()
        if used is not None:
            raise Forbidden("this transfer approval was already used")

    def export(self, actor: Actor, subject_ids: Sequence[str], recipient_public_pem: bytes, approval_id: str,
               origin: Origin) -> dict[str, Any]:
        """Seal the chosen subjects' data (never CVVs) for the acquirer, once, as a second officer approved."""
        self._require(actor, "export", "transfer_export", origin)
        if not subject_ids:
            raise ValidationFailed("subjects", "name at least one subject")
        recipient = recipient_fingerprint(recipient_public_pem)

        def work(conn: Connection) -> dict[str, Any]:
            self._check_approval(conn, approval_id, subject_ids, recipient)
            now = self._clock()
            people = []
            for subject_id in subject_ids:
                rows = [r for r in self._tokens.rows_where(conn, tokens.c.subject_id == subject_id, now).values()
                        if r["kind"] != "cvv"]
                values = self._tokens.open_rows(conn, rows)
                people.append({"subject_id": subject_id, "consents": self._consents(conn, subject_id), "tokens": [
                    {"token": r["token"], "kind": r["kind"], "value": values[r["token"]],
                     "reference": json.loads(r["meta"]).get("reference"),
                     "deterministic": r["lookup"] is not None}
                    for r in rows if not isinstance(values[r["token"]], DecryptionFailed)]})
            manifest: dict[str, Any] = {"created_at": now.isoformat(), "subjects": list(subject_ids),
                        "counts": {p["subject_id"]: len(p["tokens"]) for p in people}}
            self._trail.record(conn, [self._event(actor, "transfer_export", "allowed", origin, subject_id=s,
                                                  detail=f"approval={approval_id} tokens={manifest['counts'][s]}")
                                      for s in subject_ids])
            return seal_bundle({"subjects": people}, manifest, recipient_public_pem)

        bundle: dict[str, Any] = self._audited(actor, "transfer_export", origin, work)
        return bundle

    @staticmethod
    def _consents(conn: Connection, subject_id: str) -> list[dict[str, Any]]:
        return [{"purpose": r.purpose, "granted": r.granted, "at": r.at.isoformat(), "source": r.source}
                for r in conn.execute(select(consents).where(consents.c.subject_id == subject_id)
                                      .order_by(consents.c.id))]

    def import_bundle(self, actor: Actor, bundle: dict[str, Any], private_pem: bytes,
                      origin: Origin) -> dict[str, Any]:
        """Load a bundle: same tokens, new ciphertext under this vault's keys."""
        self._require(actor, "tokenize", "transfer_import", origin)
        manifest, payload = open_bundle(bundle, private_pem)
        for person in payload["subjects"]:
            for item in person["tokens"]:
                if kind_of_token(item["token"]) != item["kind"]:
                    raise ValidationFailed("bundle", "holds a token that does not match its kind")
        requests = [TokenRequest(kind=item["kind"], value=item["value"], subject_id=person["subject_id"],
                                 deterministic=item["deterministic"], reference=item["reference"], token=item["token"])
                    for person in payload["subjects"] for item in person["tokens"]]
        results = self._tokens.tokenize(actor, requests, origin)
        loaded = sum(isinstance(r, TokenRecord) for r in results)
        return {"subjects": manifest["subjects"], "loaded": loaded, "refused": len(results) - loaded}
