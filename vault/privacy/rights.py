"""Customers' rights and the shop's promises, as operations a privacy officer runs.

Access and portability (export), erasure with retention and legal holds, restriction,
consent and opt-out, children under 16, a register of requests with due dates, and
legal disclosures under dual control. Every call is authorised and audited.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.operators import StepUp
from vault.access.policy import Policy
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import Conflict, DecryptionFailed, Forbidden, NotFound, ValidationFailed
from vault.keys.envelope import record_aad
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.rotation import rekey_data_key
from vault.keys.row_mac import RowMacs
from vault.storage.engine import drop_deleted_copies
from vault.storage.schema import (
    audit_events,
    consents,
    data_keys,
    disclosures,
    holds,
    insert_ignoring_conflict,
    privacy_requests,
    retained_records,
    subjects,
    tokens,
)
from vault.tokens.formats import kind_of_token
from vault.tokens.kinds import CardValue, canonical_bytes, metadata_for
from vault.tokens.records import TokenRecord, TokenRequest, purpose_of_kind
from vault.tokens.service import TokenService
from vault.tokens.subjects import CONSENT_PURPOSES, refuse_if_held

__all__ = ["PrivacyService", "RIGHTS", "RESPONSE_DAYS"]

RIGHTS = ("access", "portability", "rectification", "erasure", "restriction", "objection", "minor")
RESPONSE_DAYS = 30  # GDPR Art. 12(3): one month
DISCLOSURE_DAYS = 7


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


class PrivacyService(AuditedOperations):
    def __init__(self, *, engine: Engine, keys: KeyHierarchy, policy: Policy, trail: AuditTrail,
                 tokens_service: TokenService, clock: Callable[[], datetime] = _now) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._keys = keys
        self._macs = RowMacs(keys)
        self._tokens = tokens_service

    # -- helpers ----------------------------------------------------------------------------

    def _ensure_subject(self, conn: Connection, subject_id: str) -> dict[str, Any]:
        """The subject's row, created if need be and locked FOR UPDATE until commit; MAC-checked.

        Lock rule: every read-modify-write of a subject's state (erasure, minor, holds,
        consents) takes this row lock first, then data-key rows, then token rows, so two
        of them on different hosts run one after the other and see each other's result.
        """
        fresh = {"id": subject_id, "restricted": False, "minor": False, "created_at": self._clock(),
                 "erased_at": None}
        conn.execute(insert_ignoring_conflict(conn, subjects),
                     [{**fresh, "row_mac": self._macs.seal(conn, subjects, fresh)}])
        row = conn.execute(select(subjects).where(subjects.c.id == subject_id).with_for_update()).mappings().one()
        self._macs.check(conn, subjects, row)
        return dict(row)

    def _known(self, conn: Connection, subject_id: str) -> None:
        has_tokens = conn.execute(select(exists().where(tokens.c.subject_id == subject_id))).scalar()
        has_row = conn.execute(select(exists().where(subjects.c.id == subject_id))).scalar()
        if not (has_tokens or has_row):
            raise NotFound("no such subject")

    def _request(self, conn: Connection, actor: Actor, subject_id: str, right: str, outcome: str) -> str:
        """Record a right exercised now, in the register, as completed."""
        now = self._clock()
        request_id = f"req_{secrets.token_hex(8)}"
        self._macs.insert(conn, privacy_requests, {
            "id": request_id, "subject_id": subject_id, "right": right, "received_at": now,
            "due_at": now + timedelta(days=RESPONSE_DAYS), "status": "completed", "outcome": outcome[:500],
            "closed_at": now, "handled_by": actor.id})
        return request_id

    def _requests(self, conn: Connection, query: Any, due_by: datetime | None = None) -> list[dict[str, Any]]:
        """Register rows, each MAC-checked (a request closed, re-dated or moved in the database is refused),
        then, with `due_by`, those due by then."""
        found = []
        for row in conn.execute(query).mappings():
            self._macs.check(conn, privacy_requests, row)
            if due_by is None or row["due_at"] <= due_by:
                found.append(self._request_json(row))
        return found

    def _lock_subject_rows(self, conn: Connection, subject_id: str) -> None:
        """Lock the subject's token rows: a hold placed now waits for any deletion in flight (see refuse_if_held)."""
        conn.execute(select(tokens.c.token).where(tokens.c.subject_id == subject_id).with_for_update()).all()

    def _active_holds(self, conn: Connection, subject_id: str) -> list[dict[str, Any]]:
        """Every hold of the subject is MAC-checked (a release or a shortened `until` made in the database
        raises IntegrityFailure); the live ones are returned."""
        now = self._clock()
        found = []
        for row in conn.execute(select(holds).where(holds.c.subject_id == subject_id)).mappings():
            self._macs.check(conn, holds, row)
            if row["released_at"] is None and row["until"] > now:
                found.append(dict(row))
        return found

    def _purposes_for(self, kind: str) -> list[str]:
        """Purposes any role may read this kind for: what the export tells the customer."""
        found: set[str] = set()
        for role in self._policy.roles:
            for rule in self._policy.rules_of(role):
                if "detokenize" in rule.operations and kind in rule.kinds:
                    found.update(rule.purposes)
        return sorted(found)

    def _sign(self, conn: Connection, body: dict[str, Any]) -> dict[str, str]:
        key_id, key = self._keys.active_hmac_key(conn, "audit")
        payload = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return {"key_id": key_id, "hmac_sha256": hmac.new(key.expose(), b"receipt|" + payload,
                                                          hashlib.sha256).hexdigest()}

    # -- view and export (Art. 15, 20) --------------------------------------------------------

    def view(self, actor: Actor, subject_id: str, origin: Origin) -> dict[str, Any]:
        self._require(actor, "manage_subjects", "view_subject", origin, subject_id=subject_id)

        def work(conn: Connection) -> dict[str, Any]:
            self._known(conn, subject_id)
            now = self._clock()
            rows = self._tokens.rows_where(conn, tokens.c.subject_id == subject_id, now)
            by_kind: dict[str, list[dict[str, Any]]] = {}
            for row in rows.values():
                by_kind.setdefault(row["kind"], []).append({
                    "token": row["token"], "metadata": json.loads(row["meta"]),
                    "created_at": _iso(row["created_at"]), "expires_at": _iso(row["expires_at"])})
            state = conn.execute(select(subjects).where(subjects.c.id == subject_id)).mappings().first()
            result = {
                "subject_id": subject_id,
                "restricted": bool(state and state["restricted"]),
                "minor": bool(state and state["minor"]),
                "tokens": by_kind,
                "consents": self._consents(conn, subject_id),
                "holds": [{"id": h["id"], "reason": h["reason"], "until": _iso(h["until"])}
                          for h in self._active_holds(conn, subject_id)],
                "open_requests": self._requests(conn, select(privacy_requests).where(
                    privacy_requests.c.subject_id == subject_id, privacy_requests.c.status == "open")),
            }
            self._trail.record(conn, [self._event(actor, "view_subject", "allowed", origin, subject_id=subject_id)])
            return result

        found: dict[str, Any] = self._audited(actor, "view_subject", origin, work, subject_id=subject_id)
        return found

    def _consents(self, conn: Connection, subject_id: str) -> dict[str, Any]:
        history = [{"purpose": r.purpose, "granted": r.granted, "at": _iso(r.at), "source": r.source}
                   for r in conn.execute(select(consents).where(consents.c.subject_id == subject_id)
                                         .order_by(consents.c.id))]
        current = {item["purpose"]: item["granted"] for item in history}
        return {"current": current, "history": history}

    @staticmethod
    def _request_json(row: Any) -> dict[str, Any]:
        return {"id": row["id"], "subject_id": row["subject_id"], "right": row["right"],
                "received_at": _iso(row["received_at"]), "due_at": _iso(row["due_at"]), "status": row["status"],
                "outcome": row["outcome"], "closed_at": _iso(row["closed_at"])}

    def export(self, actor: Actor, subject_id: str, origin: Origin) -> dict[str, Any]:
        """Everything held on a subject, decrypted, with purposes, retention and who read it. Never CVVs."""
        self._require(actor, "export", "export", origin, subject_id=subject_id)

        def work(conn: Connection) -> dict[str, Any]:
            self._known(conn, subject_id)
            now = self._clock()
            rows = [r for r in self._tokens.rows_where(conn, tokens.c.subject_id == subject_id, now).values()
                    if r["kind"] != "cvv" and self._policy.decide(actor.role, "export", r["kind"]) is not None]
            values = self._tokens.open_rows(conn, rows)
            items = []
            for row in rows:
                value = values[row["token"]]
                retention = self._policy.retention(row["kind"])
                items.append({
                    "token": row["token"], "kind": row["kind"],
                    "value": None if isinstance(value, DecryptionFailed) else value,
                    "integrity": "failed" if isinstance(value, DecryptionFailed) else "ok",
                    "metadata": json.loads(row["meta"]), "purposes": self._purposes_for(row["kind"]),
                    "created_at": _iso(row["created_at"]), "expires_at": _iso(row["expires_at"]),
                    "retention": None if retention is None else {
                        "purge_after_unused_days": retention.purge_after_unused_days,
                        "kept_after_erasure": list(retention.keep_after_erasure),
                        "kept_days": retention.keep_days, "legal_basis": retention.legal_basis},
                })
            reads = [{"at": _iso(r.at), "actor": r.actor, "role": r.role, "purpose": r.purpose, "token": r.token,
                      "kind": r.kind} for r in conn.execute(
                select(audit_events.c.at, audit_events.c.actor, audit_events.c.role, audit_events.c.purpose,
                       audit_events.c.token, audit_events.c.kind).where(
                    audit_events.c.subject_id == subject_id, audit_events.c.action == "detokenize",
                    audit_events.c.outcome == "allowed").order_by(audit_events.c.seq))]
            register = [{"id": d.id, "case_reference": d.case_reference, "authority": d.authority,
                         "status": d.status, "requested_at": _iso(d.requested_at), "approved_at": _iso(d.approved_at),
                         "delivered_at": _iso(d.delivered_at)}
                        for d in conn.execute(select(disclosures).where(disclosures.c.subject_id == subject_id))]
            request_id = self._request(conn, actor, subject_id, "access", f"exported {len(items)} values")
            document = {
                "subject_id": subject_id, "generated_at": _iso(now), "request_id": request_id,
                "data": items, "consents": self._consents(conn, subject_id),
                "disclosure_history": reads, "legal_disclosures": register,
                "retained_records": [{"token": r["token"], "kind": r["kind"], "metadata": json.loads(r["meta"]),
                                      "reason": r["reason"], "retain_until": _iso(r["retain_until"])}
                                     for r in self._retained(conn, subject_id)],
            }
            self._trail.record(conn, [self._event(actor, "export", "allowed", origin, subject_id=subject_id,
                                                  detail=f"values={len(items)}")])
            return document

        found: dict[str, Any] = self._audited(actor, "export", origin, work, subject_id=subject_id)
        return found

    def _retained(self, conn: Connection, subject_id: str) -> list[Any]:
        rows = list(conn.execute(select(retained_records).where(retained_records.c.subject_id == subject_id))
                    .mappings())
        for row in rows:
            self._macs.check(conn, retained_records, row)
        return rows

    # -- erasure (Art. 17), minors --------------------------------------------------------------

    def _erase(self, conn: Connection, actor: Actor, subject_id: str, reason: str) -> dict[str, Any]:
        now = self._clock()
        self._ensure_subject(conn, subject_id)  # locked: a hold added meanwhile waits for us, or we see it
        refuse_if_held(conn, subject_id, now, self._macs)
        # The subject's keys locked before its tokens are read: every tokenize sealing under
        # them (FOR KEY SHARE) has committed, and its token is erased with the rest.
        conn.execute(select(data_keys.c.id).where(data_keys.c.subject_id == subject_id)
                     .order_by(data_keys.c.id).with_for_update()).all()
        self._lock_subject_rows(conn, subject_id)
        rows = list(conn.execute(select(tokens.c.token, tokens.c.kind, tokens.c.meta)
                                 .where(tokens.c.subject_id == subject_id)).mappings())
        erased: dict[str, int] = {}
        retained = []
        for row in rows:
            erased[row["kind"]] = erased.get(row["kind"], 0) + 1
            rule = self._policy.retention(row["kind"])
            if rule is not None and rule.keep_after_erasure:
                meta = json.loads(row["meta"])
                kept = {name: meta[name] for name in rule.keep_after_erasure if name in meta}
                until = now + timedelta(days=rule.keep_days)
                self._macs.insert(conn, retained_records, {
                    "token": row["token"], "subject_id": subject_id, "kind": row["kind"], "meta": json.dumps(kept),
                    "reason": rule.legal_basis[:200], "retain_until": until, "created_at": now})
                retained.append({"token": row["token"], "kind": row["kind"], "kept": kept,
                                 "why": rule.legal_basis, "until": _iso(until)})
        # Exactly the tokens counted and retained above: a token of a key created after our locks
        # (a tokenize that overlapped the erasure) is ordered after it and stays, with its key.
        listed = [row["token"] for row in rows]
        if listed:
            self._tokens.delete_rows(conn, and_(tokens.c.subject_id == subject_id, tokens.c.token.in_(listed)))
        # Crypto-shredding: the subject's data keys go, so any copy of its ciphertext is unreadable.
        key_ids = list(conn.execute(delete(data_keys).where(
            data_keys.c.subject_id == subject_id,
            ~select(tokens.c.token).where(tokens.c.data_key_id == data_keys.c.id).exists())
            .returning(data_keys.c.id)).scalars())
        self._keys.forget(key_ids)
        self._macs.update(conn, subjects, subject_id, {"erased_at": now})
        receipt: dict[str, Any] = {
                   "receipt_id": f"rcpt_{secrets.token_hex(8)}", "subject_id": subject_id, "at": _iso(now),
                   "reason": reason, "erased": erased, "data_keys_destroyed": len(key_ids), "retained": retained}
        receipt["signature"] = self._sign(conn, receipt)
        return receipt

    def erase(self, actor: Actor, subject_id: str, origin: Origin) -> dict[str, Any]:
        """Erase a subject by destroying its keys and rows; legal retention keeps metadata only."""
        self._require(actor, "manage_subjects", "erase", origin, subject_id=subject_id)

        def work(conn: Connection) -> dict[str, Any]:
            self._known(conn, subject_id)
            receipt = self._erase(conn, actor, subject_id, "erasure request (GDPR Art. 17)")
            receipt["request_id"] = self._request(conn, actor, subject_id, "erasure",
                                                  f"erased {sum(receipt['erased'].values())} tokens")
            self._trail.record(conn, [self._event(actor, "erase", "allowed", origin, subject_id=subject_id,
                                                  detail=f"receipt={receipt['receipt_id']}")])
            return receipt

        found: dict[str, Any] = self._audited(actor, "erase", origin, work, subject_id=subject_id)
        drop_deleted_copies(self._engine)  # the destroyed keys' old pages too
        return found

    def mark_minor(self, actor: Actor, subject_id: str, origin: Origin) -> dict[str, Any]:
        """A subject found to be under 16: erased at once (except legally required records), no marketing ever."""
        self._require(actor, "manage_subjects", "mark_minor", origin, subject_id=subject_id)

        def work(conn: Connection) -> dict[str, Any]:
            self._ensure_subject(conn, subject_id)
            self._macs.update(conn, subjects, subject_id, {"minor": True})
            self._macs.insert(conn, consents, {"subject_id": subject_id, "purpose": "marketing", "granted": False,
                                               "at": self._clock(), "source": f"minor:{actor.id}"[:128]})
            receipt = self._erase(conn, actor, subject_id, "subject under 16")
            receipt["request_id"] = self._request(conn, actor, subject_id, "minor", "erased; marketing blocked")
            self._trail.record(conn, [self._event(actor, "mark_minor", "allowed", origin, subject_id=subject_id,
                                                  detail=f"receipt={receipt['receipt_id']}")])
            return receipt

        found: dict[str, Any] = self._audited(actor, "mark_minor", origin, work, subject_id=subject_id)
        drop_deleted_copies(self._engine)
        return found

    # -- restriction (Art. 18), consent (Art. 21) ----------------------------------------------

    def restrict(self, actor: Actor, subject_id: str, restricted: bool, origin: Origin) -> None:
        self._require(actor, "manage_subjects", "restrict", origin, subject_id=subject_id)

        def work(conn: Connection) -> None:
            self._known(conn, subject_id)
            self._ensure_subject(conn, subject_id)
            self._macs.update(conn, subjects, subject_id, {"restricted": restricted})
            self._request(conn, actor, subject_id, "restriction", "restricted" if restricted else "lifted")
            self._trail.record(conn, [self._event(actor, "restrict", "allowed", origin, subject_id=subject_id,
                                                  detail=f"restricted={restricted}")])

        self._audited(actor, "restrict", origin, work, subject_id=subject_id)

    def set_consents(self, actor: Actor, subject_id: str, choices: dict[str, bool], source: str,
                     origin: Origin) -> dict[str, Any]:
        self._require(actor, "manage_consents", "consent", origin, subject_id=subject_id)
        for purpose, granted in choices.items():
            if purpose not in CONSENT_PURPOSES or not isinstance(granted, bool):
                raise ValidationFailed(f"consents.{purpose}" if purpose.isidentifier() else "consents",
                                       f"must map {', '.join(CONSENT_PURPOSES)} to true or false")
        refuse_pan("source", source)

        def work(conn: Connection) -> dict[str, Any]:
            state = self._ensure_subject(conn, subject_id)
            now = self._clock()
            for purpose, granted in choices.items():
                if purpose == "marketing" and granted and state["minor"]:
                    raise Forbidden("marketing stays blocked for a subject under 16")
                self._macs.insert(conn, consents, {"subject_id": subject_id, "purpose": purpose, "granted": granted,
                                                   "at": now, "source": source[:128]})
            if any(not granted for granted in choices.values()):
                self._request(conn, actor, subject_id, "objection",
                              "opted out of " + ", ".join(p for p, g in choices.items() if not g))
            self._trail.record(conn, [self._event(actor, "consent", "allowed", origin, subject_id=subject_id,
                                                  detail=",".join(f"{p}={g}" for p, g in choices.items()))])
            return self._consents(conn, subject_id)

        found: dict[str, Any] = self._audited(actor, "consent", origin, work, subject_id=subject_id)
        return found

    # -- legal holds --------------------------------------------------------------------------

    def add_hold(self, actor: Actor, subject_id: str, reason: str, until: datetime, origin: Origin) -> dict[str, Any]:
        self._require(actor, "manage_subjects", "hold", origin, subject_id=subject_id)
        if not reason.strip() or len(reason) > 500:
            raise ValidationFailed("reason", "must be 1 to 500 characters")
        refuse_pan("reason", reason)
        if until <= self._clock():
            raise ValidationFailed("until", "must be in the future")

        def work(conn: Connection) -> dict[str, Any]:
            self._ensure_subject(conn, subject_id)
            self._lock_subject_rows(conn, subject_id)
            hold_id = f"hold_{secrets.token_hex(8)}"
            self._macs.insert(conn, holds, {"id": hold_id, "subject_id": subject_id, "reason": reason.strip(),
                                            "until": until, "created_by": actor.id, "created_at": self._clock(),
                                            "released_at": None})
            self._trail.record(conn, [self._event(actor, "hold", "allowed", origin, subject_id=subject_id,
                                                  detail=f"hold={hold_id}")])
            return {"id": hold_id, "subject_id": subject_id, "until": _iso(until)}

        found: dict[str, Any] = self._audited(actor, "hold", origin, work, subject_id=subject_id)
        return found

    # Releasing a hold is under dual control (approval action `release_hold`, see api/wiring.py):
    # one officer files the request, a second one approves it, and only then does this run.

    def check_release_hold(self, conn: Connection, params: dict[str, Any]) -> None:
        """When the release is requested: the hold exists and is still in force."""
        found = conn.execute(select(holds.c.id).where(
            holds.c.id == str(params.get("hold_id")), holds.c.subject_id == str(params.get("subject_id")),
            holds.c.released_at.is_(None))).first()
        if found is None:
            raise NotFound("no such hold")

    def run_release_hold(self, conn: Connection, actor: Actor, params: dict[str, Any],
                         origin: Origin) -> dict[str, Any]:
        """In the approving transaction: release the hold, audited as the approver's act."""
        subject_id, hold_id = str(params["subject_id"]), str(params["hold_id"])
        done = self._macs.update(conn, holds, hold_id, {"released_at": self._clock()},
                                 holds.c.subject_id == subject_id, holds.c.released_at.is_(None))
        if not done:
            raise NotFound("no such hold")
        self._trail.record(conn, [self._event(actor, "release_hold", "allowed", origin, subject_id=subject_id,
                                              detail=f"hold={hold_id}")])
        return {"released": hold_id}

    # -- requests register ------------------------------------------------------------------

    def register_request(self, actor: Actor, subject_id: str, right: str, origin: Origin) -> dict[str, Any]:
        """A request received now and not yet handled: due in one month."""
        self._require(actor, "manage_subjects", "register_request", origin, subject_id=subject_id)
        if right not in RIGHTS:
            raise ValidationFailed("right", "must be one of " + ", ".join(RIGHTS))

        def work(conn: Connection) -> dict[str, Any]:
            now = self._clock()
            request_id = f"req_{secrets.token_hex(8)}"
            self._macs.insert(conn, privacy_requests, {
                "id": request_id, "subject_id": subject_id, "right": right, "received_at": now,
                "due_at": now + timedelta(days=RESPONSE_DAYS), "status": "open"})
            self._trail.record(conn, [self._event(actor, "register_request", "allowed", origin,
                                                  subject_id=subject_id, detail=f"{right}:{request_id}")])
            return self._requests(conn, select(privacy_requests).where(privacy_requests.c.id == request_id))[0]

        found: dict[str, Any] = self._audited(actor, "register_request", origin, work, subject_id=subject_id)
        return found

    def close_request(self, actor: Actor, request_id: str, outcome: str, origin: Origin) -> None:
        self._require(actor, "manage_subjects", "close_request", origin)
        refuse_pan("outcome", outcome)

        def work(conn: Connection) -> None:
            done = self._macs.update(conn, privacy_requests, request_id, {
                "status": "completed", "outcome": outcome[:500], "closed_at": self._clock(), "handled_by": actor.id},
                privacy_requests.c.status == "open")
            if not done:
                raise NotFound("no such open request")
            self._trail.record(conn, [self._event(actor, "close_request", "allowed", origin, detail=request_id)])

        self._audited(actor, "close_request", origin, work)

    def requests_due(self, actor: Actor, origin: Origin, within_days: int | None = None) -> list[dict[str, Any]]:
        """Open requests, soonest due first; with `within_days`, only those due by then."""
        self._require(actor, "manage_subjects", "list_requests", origin)
        # Every open request is read and checked, then filtered here: a due date moved out of the window in
        # the database is refused, not silently left out of the reminders.
        until = None if within_days is None else self._clock() + timedelta(days=within_days)
        ordered = select(privacy_requests).where(privacy_requests.c.status == "open").order_by(
            privacy_requests.c.due_at)
        found: list[dict[str, Any]] = self._audited(actor, "list_requests", origin,
                                                    lambda conn: self._requests(conn, ordered, until))
        return found

    # -- correction (GDPR Art. 16) -----------------------------------------------------------

    def _locked_token(self, conn: Connection, token: str, now: datetime) -> Any | None:
        """The token's live row, read after locking its data key, then the token row (that order).

        Locking the key first keeps the order every writer uses (key, then token), so a
        concurrent tokenize, re-key job or correction never deadlocks with this one; reading
        again under both locks gives the state no one else can change before commit.
        """
        row = self._tokens.rows_where(conn, tokens.c.token == token, now).get(token)
        for _attempt in range(3):
            if row is None:
                return None
            self._keys.lock_data_key(conn, row["data_key_id"])
            conn.execute(select(tokens.c.token).where(tokens.c.token == token).with_for_update()).all()
            fresh = self._tokens.rows_where(conn, tokens.c.token == token, now).get(token)
            if fresh is None or fresh["data_key_id"] == row["data_key_id"]:
                return fresh
            row = fresh  # corrected meanwhile: now under another key
        raise Conflict("the token is being changed; try again")

    def correct(self, step_up: StepUp, token: str, value: Any, origin: Origin) -> tuple[TokenRecord, list[str]]:
        """Replace the value behind a token, keeping the token; returns who had read the old value.

        A correction needs a step-up: it overwrites what a gateway charges or a courier
        delivers to. A card keeps its number: only expiry and holder can be corrected, as a
        different PAN behind the same token would make every later charge hit another card.
        The new value goes under a fresh per-record data key; the old per-record key is
        destroyed, or a shared subject key gets new material, so the old value cannot be
        recovered from this database, not even by restoring an old copy of the row.
        """
        actor = step_up.actor
        self._require(actor, "correct", "correct", origin)
        kind = kind_of_token(token)
        now = self._clock()

        def work(conn: Connection) -> tuple[TokenRecord, list[str]]:
            row = self._locked_token(conn, token, now)
            if row is None or row["kind"] == "cvv" or self._policy.decide(actor.role, "correct", row["kind"]) is None:
                raise NotFound("not found")
            parsed = self._tokens.validate(TokenRequest(kind=row["kind"], value=value), now.date())
            if isinstance(parsed, CardValue):
                old = self._tokens.open_rows(conn, [row])[token]
                if isinstance(old, DecryptionFailed):
                    raise old
                if not hmac.compare_digest(parsed.pan, str(old["pan"])):
                    raise ValidationFailed("value.pan", "cannot change: only expiry and holder can be corrected; "
                                                        "a different card needs a new token")
            old_meta = json.loads(row["meta"])
            facts = metadata_for(row["kind"], parsed, keep_bin=self._policy.keep_bin)
            if "reference" in old_meta:
                facts["reference"] = old_meta["reference"]
            plaintext = canonical_bytes(parsed)
            data_key = self._keys.new_data_key(conn, purpose_of_kind(row["kind"]), None)
            new = {"token": token, "kind": row["kind"], "subject_id": row["subject_id"], "data_key_id": data_key.id,
                   "meta": json.dumps(facts, sort_keys=True), "expires_at": row["expires_at"]}
            new["ciphertext"] = data_key.cipher.seal(plaintext, record_aad(new))
            if row["lookup"] is not None:
                new["lookup"] = self._tokens.lookup(conn, row["kind"], row["subject_id"], plaintext)
                clash = conn.execute(select(tokens.c.token).where(tokens.c.lookup == new["lookup"],
                                                                  tokens.c.token != token)).first()
                if clash is not None:
                    raise Conflict("another deterministic token holds this value")
            conn.execute(insert(data_keys), [data_key.row])
            conn.execute(update(tokens).where(tokens.c.token == token).values(
                **{k: v for k, v in new.items() if k not in ("token", "kind", "subject_id", "expires_at")}))
            refuse_if_held(conn, row["subject_id"], now, self._macs)  # after the update: it holds the row's lock
            if row["dk_subject"] is None:
                conn.execute(delete(data_keys).where(data_keys.c.id == row["data_key_id"]))
            else:
                # The old value was sealed under the subject's shared key: new material for that key
                # (its other records re-sealed) so a restored copy of the old row can never open.
                rekey_data_key(conn, self._keys, row["data_key_id"])
            recipients = sorted({f"{r.role}:{r.actor}" for r in conn.execute(
                select(audit_events.c.actor, audit_events.c.role).where(
                    audit_events.c.token == token, audit_events.c.action == "detokenize",
                    audit_events.c.outcome == "allowed"))})
            self._trail.record(conn, [self._event(actor, "correct", "allowed", origin, token=token, kind=row["kind"],
                                                  subject_id=row["subject_id"], key_id=data_key.id,
                                                  detail=f"recipients={len(recipients)}")])
            record = TokenRecord(token=token, kind=row["kind"], metadata=facts, created_at=row["created_at"],
                                 expires_at=row["expires_at"], subject_id=row["subject_id"])
            return record, recipients

        result: tuple[TokenRecord, list[str]] = self._audited(actor, "correct", origin, work, token=token, kind=kind)
        drop_deleted_copies(self._engine)  # the old value's key and ciphertext pages
        return result
