"""Tokenize, detokenize, read metadata and delete: the vault's use cases.

Each call runs in one database transaction that holds the operation and its audit
events together: if anything fails (key service, database, audit write) nothing of
it stays and no value is returned. A PAN's whole path is here, in kinds.py (rules),
formats.py (formats), rows.py (reading), keys/hierarchy.py (which key) and keys/envelope.py (sealing).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.engine import Connection, Engine

from vault.access.guessing import MISS_DETAIL, GuessingGuard
from vault.access.operations import AuditedOperations
from vault.access.policy import PURPOSES, Policy, apply_view, shown_view
from vault.audit.alerts import integrity_event
from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin
from vault.clear_text import refuse_pan
from vault.errors import (
    Conflict,
    DecryptionFailed,
    Forbidden,
    IntegrityFailure,
    NotFound,
    ValidationFailed,
    VaultError,
)
from vault.keys.envelope import record_aad
from vault.keys.hierarchy import RECORD_PURPOSES, DataKey, KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.storage.engine import drop_deleted_copies
from vault.storage.schema import data_keys, tokens
from vault.tokens.bins import KEEP_BIN_MIN_LENGTH, BinCounts
from vault.tokens.formats import card_token, kind_of_token, opaque_token
from vault.tokens.kinds import (
    CardValue,
    canonical_bytes,
    check_card_not_expired,
    metadata_for,
    parse_value,
    validation_failed,
    value_from_bytes,
)
from vault.tokens.records import Detokenized, Limits, TokenRecord, TokenRequest, purpose_of_kind
from vault.tokens.rows import INSERT_DATA_KEYS, MARK_USED, live_rows_where, new_tokens, open_rows, rows_by_token
from vault.tokens.subjects import held_subjects, refuse_if_held, subject_states

__all__ = ["TokenService"]

_TOKEN_RETRIES = 8
SYSTEM = Actor(id="system", role="system")



def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Pending:
    index: int
    request: TokenRequest
    parsed: Any
    lookup: bytes | None
    data_key: DataKey
    new_key: bool
    row: dict[str, Any]


class TokenService(AuditedOperations):
    """The vault's operations. Holds no request state; safe to share across threads."""

    def __init__(
        self,
        *,
        engine: Engine,
        keys: KeyHierarchy,
        policy: Policy,
        trail: AuditTrail,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = _now,
        guessing: GuessingGuard | None = None,
    ) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._keys = keys
        self._macs = RowMacs(keys)
        self._guessing = guessing or GuessingGuard(trail, self._macs, clock=clock)
        self._bins = BinCounts(per_day=self._guessing.limits.per_day)
        self._limits = limits or Limits()
        self._purge_lock = threading.Lock()
        self._last_purge = 0.0

    # -- shared helpers -------------------------------------------------------------------

    def lookup(self, conn: Connection, kind: str, subject_id: str | None, plaintext: bytes) -> bytes:
        key = self._keys.hmac_key(conn, "index").expose()
        message = json.dumps([kind, subject_id or ""]).encode() + b"\x00" + plaintext
        return hmac.new(key, message, hashlib.sha256).digest()

    # -- tokenize --------------------------------------------------------------------------

    def validate(self, request: TokenRequest, today: date) -> Any:
        try:
            parsed = parse_value(request.kind, request.value)
            if isinstance(parsed, CardValue):
                check_card_not_expired(parsed, today)
        except ValidationError as exc:
            raise validation_failed(exc, ("value",)) from None
        except ValueError as exc:
            raise ValidationFailed("value.exp_year", str(exc)) from None
        if request.reference is not None:
            refuse_pan("reference", request.reference)  # kept in clear, even after erasure
        ttl = request.ttl_seconds
        if request.kind == "cvv":
            if request.deterministic:
                raise ValidationFailed("deterministic", "is not allowed for cvv")
            if ttl is not None and not 1 <= ttl <= self._limits.cvv_ttl_max:
                raise ValidationFailed("ttl_seconds", f"must be 1 to {self._limits.cvv_ttl_max} for cvv")
        elif ttl is not None and not 1 <= ttl <= self._limits.ttl_max:
            raise ValidationFailed("ttl_seconds", "is out of range")
        return parsed

    def _expiry(self, request: TokenRequest, now: datetime) -> datetime | None:
        ttl = request.ttl_seconds
        if request.kind == "cvv" and ttl is None:
            ttl = self._limits.cvv_ttl_default
        return None if ttl is None else now + timedelta(seconds=ttl)

    def tokenize(
        self, actor: Actor, requests: Sequence[TokenRequest], origin: Origin
    ) -> list[TokenRecord | VaultError]:
        """Tokenize a batch; one result per request, in order (a record or the error)."""
        if not self._policy.may_use(actor.role, "tokenize"):
            raise self._deny(actor, "tokenize", origin, Forbidden("role may not tokenize"))
        if len(requests) > self._limits.batch_max:
            raise ValidationFailed("items", f"at most {self._limits.batch_max} items")
        now = self._clock()
        results: list[TokenRecord | VaultError | None] = [None] * len(requests)
        valid: list[tuple[int, TokenRequest, Any]] = []
        for index, request in enumerate(requests):
            try:
                if self._policy.decide(actor.role, "tokenize", request.kind) is None:
                    raise Forbidden("role may not tokenize this kind")
                valid.append((index, request, self.validate(request, now.date())))
            except VaultError as error:
                results[index] = error

        presealed = self._preseal(valid, now)

        def work(conn: Connection) -> list[AuditEvent]:
            self._store_new(conn, valid, results, now, presealed)
            events = []
            for index, request in enumerate(requests):
                result = results[index]
                if isinstance(result, TokenRecord):
                    events.append(self._event(actor, "tokenize", "allowed", origin, token=result.token,
                                              kind=result.kind, subject_id=result.subject_id))
                else:
                    events.append(self._event(actor, "tokenize", "denied", origin, kind=request.kind,
                                              subject_id=request.subject_id,
                                              error_code=result.code if result else "internal_error"))
                if isinstance(result, IntegrityFailure):  # the alert: a SIEM pages on action `integrity`
                    events.append(self._event(actor, "integrity", "denied", origin, kind=request.kind,
                                              error_code=result.code, detail=f"table={result.table} index"))
            self._trail.record(conn, events)
            return events

        try:
            self._transaction(self._gated(actor, work))
        except VaultError as error:
            self._audit_failure([self._event(actor, "tokenize", "error", origin, error_code=error.code,
                                             kind=r.kind, subject_id=r.subject_id) for r in requests])
            raise
        return [r if r is not None else Conflict("not stored") for r in results]

    def _preseal(self, valid: list[tuple[int, TokenRequest, Any]], now: datetime) -> dict[int, _Pending]:
        """Seal, before the write transaction, the records that need nothing from the database.

        On SQLite every transaction holds the one write lock; random tokens under a fresh
        per-record key (the common case) can be drawn and sealed outside it, from keys in
        memory. Anything else, or a cold key cache, is done inside the transaction.
        """
        ready: dict[int, _Pending] = {}
        for index, request, parsed in valid:
            if request.subject_id is not None or request.deterministic or self._may_keep_bin(request, parsed):
                continue  # these need the database first (a subject key, a lookup, a BIN count)
            data_key = self._keys.new_record_key_from_memory(purpose_of_kind(request.kind))
            if data_key is None:
                break
            ready[index] = self._sealed(index, request, parsed, None, data_key, True, now)
        return ready

    def _may_keep_bin(self, request: TokenRequest, parsed: Any) -> bool:
        return (self._policy.keep_bin and request.token is None and isinstance(parsed, CardValue)
                and len(parsed.pan) >= KEEP_BIN_MIN_LENGTH)

    def _sealed(self, index: int, request: TokenRequest, parsed: Any, lookup: bytes | None, data_key: DataKey,
                new_key: bool, now: datetime, *, keeps_bin: bool = False) -> _Pending:
        facts = metadata_for(request.kind, parsed, keep_bin=self._policy.keep_bin)
        if request.reference is not None:
            facts["reference"] = request.reference
        row = {
            "token": request.token or self._new_token(request.kind, parsed, keeps_bin),
            "kind": request.kind,
            "subject_id": request.subject_id,
            "data_key_id": data_key.id,
            "lookup": lookup,
            "meta": json.dumps(facts, sort_keys=True),
            "created_at": now,
            "expires_at": self._expiry(request, now),
        }
        row["ciphertext"] = data_key.cipher.seal(canonical_bytes(parsed), record_aad(row))
        return _Pending(index, request, parsed, lookup, data_key, new_key, row)

    def _store_new(
        self,
        conn: Connection,
        valid: list[tuple[int, TokenRequest, Any]],
        results: list[TokenRecord | VaultError | None],
        now: datetime,
        presealed: dict[int, _Pending],
    ) -> None:
        pending: list[_Pending] = []
        # All the batch's subject keys in one locking read (FOR KEY SHARE until commit: see subject_data_key).
        subject_keys = self._keys.subject_data_keys(conn, [
            (request.subject_id, purpose_of_kind(request.kind)) for index, request, _parsed in valid
            if request.subject_id is not None and index not in presealed])
        lookups: dict[bytes, int] = {}
        for index, request, parsed in valid:
            if (ready := presealed.get(index)) is not None:
                pending.append(ready)
                continue
            lookup = (self.lookup(conn, request.kind, request.subject_id, canonical_bytes(parsed))
                      if request.deterministic else None)
            if lookup is not None and lookup in lookups:
                pending.append(_Pending(index, request, parsed, lookup, pending[lookups[lookup]].data_key, False, {}))
                continue
            purpose = purpose_of_kind(request.kind)
            if request.subject_id is not None:
                data_key, new_key = subject_keys[(request.subject_id, purpose)], False
            else:
                data_key, new_key = self._keys.new_data_key(conn, purpose, None), True
            if lookup is not None:
                lookups[lookup] = len(pending)
            # keep_bin: the token keeps the BIN only while the BIN has room (vault/tokens/bins.py).
            keeps_bin = self._may_keep_bin(request, parsed) and self._bins.claim(conn, parsed.pan)
            pending.append(self._sealed(index, request, parsed, lookup, data_key, new_key, now, keeps_bin=keeps_bin))

        writers = [p for p in pending if p.row]
        if not writers:
            self._resolve_duplicates(conn, pending, results, now)
            return
        found = self._existing_by_lookup(conn, [p for p in writers if p.lookup is not None], now)
        to_insert = [p for p in writers if p.lookup is None or p.lookup not in found]
        new_keys = [p.data_key.row for p in to_insert if p.new_key]
        if new_keys:
            conn.execute(INSERT_DATA_KEYS, new_keys)
        for _attempt in range(_TOKEN_RETRIES):
            if not to_insert:
                break
            stmt = new_tokens(conn.dialect.name)
            inserted = {row[0] for row in conn.execute(stmt, [p.row for p in to_insert])}
            retry = []
            for p in to_insert:
                # A token drawn twice within this batch is inserted once: only its first holder keeps it.
                if p.row["token"] in inserted:
                    inserted.discard(p.row["token"])
                    results[p.index] = self._record(p.row)
                elif p.lookup is not None:
                    found.update(self._existing_by_lookup(conn, [p], now))
                    if p.lookup not in found:
                        retry.append(self._reissue(p))
                elif p.request.token is not None:
                    results[p.index] = Conflict("token already exists")
                else:
                    retry.append(self._reissue(p))
            to_insert = retry
        for p in to_insert:
            results[p.index] = Conflict("could not allocate a unique token")
        unused = [p.data_key.id for p in writers if p.new_key and results[p.index] is None]
        if unused:
            conn.execute(delete(data_keys).where(data_keys.c.id.in_(unused)))
        for p in writers:
            if results[p.index] is None and p.lookup in found:
                results[p.index] = found[p.lookup]
        self._resolve_duplicates(conn, pending, results, now)

    def _resolve_duplicates(
        self, conn: Connection, pending: list[_Pending], results: list[TokenRecord | VaultError | None], now: datetime
    ) -> None:
        """Later items of a batch repeating an earlier deterministic value share its token."""
        by_lookup = {p.lookup: results[p.index] for p in pending if p.row and p.lookup is not None}
        for p in pending:
            if not p.row:
                shared = by_lookup.get(p.lookup) if p.lookup is not None else None
                results[p.index] = shared or Conflict("not stored")

    def _reissue(self, p: _Pending) -> _Pending:
        row = dict(p.row)
        # A redraw keeps the BIN if the first draw was allowed to (its count is already taken).
        kept = self._may_keep_bin(p.request, p.parsed) and p.row["token"][:6] == p.parsed.pan[:6]
        row["token"] = self._new_token(p.request.kind, p.parsed, kept)
        row["ciphertext"] = p.data_key.cipher.seal(canonical_bytes(p.parsed), record_aad(row))
        return _Pending(p.index, p.request, p.parsed, p.lookup, p.data_key, p.new_key, row)

    @staticmethod
    def _new_token(kind: str, parsed: Any, keep_bin: bool) -> str:
        if isinstance(parsed, CardValue):
            return card_token(parsed.pan, keep_bin=keep_bin)
        return opaque_token(kind)

    @staticmethod
    def _record(row: Any) -> TokenRecord:
        return TokenRecord(token=row["token"], kind=row["kind"], metadata=json.loads(row["meta"]),
                           created_at=row["created_at"], expires_at=row["expires_at"], subject_id=row["subject_id"])

    def _existing_by_lookup(self, conn: Connection, wanted: list[_Pending],
                            now: datetime) -> dict[bytes, TokenRecord | IntegrityFailure]:
        """Tokens already issued for these deterministic values, each opened and compared first.

        The index is a clear column: an insider can move a lookup onto another row (their
        card's lookup onto a victim's token). A hit is returned only if its record opens and
        holds exactly the value asked for, with the same kind and subject; otherwise the
        item fails closed with IntegrityFailure and no token is handed out or inserted.
        """
        by_lookup = {p.lookup: p for p in wanted if p.lookup is not None}
        if not by_lookup:
            return {}
        lookups = list(by_lookup)
        # An expired deterministic token frees its slot: remove it so a new one can take it.
        # Held subjects' expired rows stay (the hold wins); the holds are read only when something expired.
        expired = and_(tokens.c.lookup.in_(lookups), tokens.c.expires_at <= now)
        if conn.execute(select(tokens.c.token).where(expired).limit(1)).first() is not None:
            held = held_subjects(conn, now, self._macs)
            self.delete_rows(conn, and_(expired, or_(tokens.c.subject_id.is_(None), tokens.c.subject_id.not_in(held))))
        rows = list(self.rows_where(conn, tokens.c.lookup.in_(lookups), now).values())
        values = self.open_rows(conn, rows) if rows else {}
        out: dict[bytes, TokenRecord | IntegrityFailure] = {}
        for row in rows:
            lookup = bytes(row["lookup"])
            asked = by_lookup[lookup]
            value = values.get(row["token"])
            same = (row["kind"] == asked.request.kind and row["subject_id"] == asked.request.subject_id
                    and not isinstance(value, DecryptionFailed)
                    and hmac.compare_digest(json.dumps(value, ensure_ascii=False, sort_keys=True).encode(),
                                            json.dumps(value_from_bytes(canonical_bytes(asked.parsed)),
                                                       ensure_ascii=False, sort_keys=True).encode()))
            out[lookup] = self._record(row) if same else IntegrityFailure("tokens")
        return out

    # -- detokenize ------------------------------------------------------------------------

    def detokenize(self, actor: Actor, token_list: Sequence[str], purpose: str, origin: Origin, *,
                   require_all: bool = False, also: Sequence[AuditEvent] = (),
                   check: Callable[[Connection], None] | None = None) -> list[Detokenized]:
        """Values for the tokens this role may read for `purpose`; others answer not found.

        `require_all` (the relay) turns any refused token into NotFound for the whole call, rolled
        back, so no CVV is spent on a request that will not be sent; `also` are events of the
        caller's own (the relay's "sending" event) committed with these, or not at all; `check`
        runs first in the same transaction (the relay's "is my route still current?") and may raise.
        """
        if not self._policy.may_use(actor.role, "detokenize"):
            raise self._deny(actor, "detokenize", origin, Forbidden("role may not detokenize"), purpose=purpose)
        if purpose not in PURPOSES:
            raise ValidationFailed("purpose", "is not a known purpose")
        if len(token_list) > self._limits.batch_max:
            raise ValidationFailed("tokens", f"at most {self._limits.batch_max} tokens")
        now = self._clock()
        kinds: dict[str, str] = {}
        for token in token_list:
            with contextlib.suppress(ValidationFailed):
                kinds[token] = kind_of_token(token)

        def work(conn: Connection) -> list[Detokenized]:
            if check is not None:
                check(conn)
            rows, expired = rows_by_token(conn, list(kinds), now)
            states = subject_states(conn, {r["subject_id"] for r in rows.values() if r["subject_id"]}, self._macs)
            ciphers = self._keys.open_data_keys(conn, [
                {"id": r["data_key_id"], "domain_key_id": r["dk_domain"], "subject_id": r["dk_subject"],
                 "purpose": r["dk_purpose"], "wrapped": r["dk_wrapped"]} for r in rows.values()
            ], RECORD_PURPOSES) if rows else {}
            out, events, read_cvvs = [], [], []
            for position, token in enumerate(token_list):
                if token not in kinds:
                    out.append(Detokenized(token="", error=ValidationFailed(f"tokens.{position}", "is not a token")))
                    events.append(self._event(actor, "detokenize", "denied", origin, purpose=purpose,
                                              error_code="invalid_input", detail="reason=malformed"))
                    continue
                row = rows.get(token)
                # Why a denial happened goes to the trail (auditors); the caller only ever sees not_found.
                reason = ("expired" if token in expired else "missing") if row is None else None
                decision = None
                if row is not None:
                    use = json.loads(row["meta"]).get("use")
                    decision = self._policy.decide(actor.role, "detokenize", row["kind"], purpose=purpose, use=use)
                    if decision is None:
                        reason = self._policy.why_denied(actor.role, "detokenize", row["kind"], purpose=purpose,
                                                         use=use)
                    elif row["subject_id"] in states:
                        reason = states[row["subject_id"]].refusal(purpose)
                    if row["kind"] == "cvv" and token in read_cvvs:
                        reason = "repeated"  # a CVV is shown at most once, even within one response
                if row is None or decision is None or reason is not None:
                    out.append(Detokenized(token=token, error=NotFound("not found")))
                    events.append(self._event(actor, "detokenize", "denied", origin, token=token,
                                              kind=kinds[token], purpose=purpose, error_code="not_found",
                                              subject_id=row["subject_id"] if row is not None else None,
                                              detail=f"reason={reason}"))
                    continue
                try:
                    plaintext = ciphers[row["data_key_id"]].open(row["ciphertext"], record_aad(dict(row)))
                except DecryptionFailed as error:
                    out.append(Detokenized(token=token, error=error))
                    events.append(self._event(actor, "detokenize", "error", origin, token=token, kind=row["kind"],
                                              subject_id=row["subject_id"], purpose=purpose,
                                              key_id=row["data_key_id"], error_code=error.code))
                    continue
                value = apply_view(row["kind"], value_from_bytes(plaintext), decision,
                                   keep_bin=self._policy.keep_bin)
                if row["kind"] == "cvv":
                    read_cvvs.append(token)
                out.append(Detokenized(token=token, value=value, kind=row["kind"],
                                       view=shown_view(row["kind"], decision)))
                events.append(self._event(actor, "detokenize", "allowed", origin, token=token, kind=row["kind"],
                                          subject_id=row["subject_id"], purpose=purpose, key_id=row["data_key_id"]))
            used = [item.token for item in out if item.error is None and item.kind == "card"]
            if used:
                # Drives "purge 13 months after last use"; at most one write per card per day.
                conn.execute(MARK_USED, {"tokens": used, "now": now, "day_ago": now - timedelta(days=1)})
            if read_cvvs:
                # Read once (PCI DSS 3.3.1): the CVV is deleted in this same transaction.
                # If another reader deleted it first, ours is not returned.
                # Its audit event then says so too: one "allowed" read per CVV, ever.
                gone = set(read_cvvs) - self.delete_rows(conn, tokens.c.token.in_(read_cvvs))
                for position, item in enumerate(out):
                    if item.token in gone and item.error is None:
                        out[position] = Detokenized(token=item.token, error=NotFound("not found"))
                        events[position] = self._event(actor, "detokenize", "denied", origin, token=item.token,
                                                       kind="cvv", purpose=purpose, error_code="not_found")
            if require_all and any(item.error is not None for item in out):
                raise NotFound("not found")
            self._trail.record(conn, [*events, *also])
            if (any(e.kind == "card" and e.detail == MISS_DETAIL for e in events)
                    and self._policy.decide(actor.role, "detokenize", "card", purpose=purpose) is not None):
                # A hit would have shown a card: these misses may be guessing (else they teach nothing).
                self._guessing.after_misses(conn, actor, now, origin)
            return out

        try:
            result: list[Detokenized] = self._transaction(self._gated(actor, work))
        except VaultError as error:
            events = [self._event(actor, "detokenize", "error", origin, token=t if t in kinds else None,
                                  purpose=purpose, error_code=error.code) for t in token_list]
            if isinstance(error, IntegrityFailure):
                events.append(integrity_event(self._clock(), actor, origin, error))
            self._audit_failure(events)
            raise
        if any(item.kind == "cvv" and item.error is None for item in result):
            drop_deleted_copies(self._engine)  # read once: not even its old pages stay behind
        return result

    def rows_where(self, conn: Connection, condition: Any, now: datetime) -> dict[str, Any]:
        """Live (unexpired) token rows with their data-key columns, by token."""
        return live_rows_where(conn, condition, now)

    def open_rows(self, conn: Connection, rows: Sequence[Any]) -> dict[str, Any | DecryptionFailed]:
        """Decrypt rows from `rows_where`: the value, or DecryptionFailed for a tampered row."""
        return open_rows(conn, self._keys, rows)

    # -- metadata and delete ---------------------------------------------------------------

    def metadata(self, actor: Actor, token: str, origin: Origin) -> TokenRecord:
        return self._single(actor, token, origin, "read_metadata")

    def delete(self, actor: Actor, token: str, origin: Origin) -> None:
        self._single(actor, token, origin, "delete")

    def _single(self, actor: Actor, token: str, origin: Origin, operation: str) -> TokenRecord:
        if not self._policy.may_use(actor.role, operation):
            raise self._deny(actor, operation, origin, Forbidden(f"role may not {operation}"))
        try:
            kind = kind_of_token(token)
        except ValidationFailed as error:
            raise self._deny(actor, operation, origin, error) from None
        now = self._clock()
        why = ["missing"]

        def work(conn: Connection) -> TokenRecord | None:
            live, expired = rows_by_token(conn, [token], now)
            row = live.get(token)
            if row is None:
                why[0] = "expired" if expired else "missing"
                return None
            if self._policy.decide(actor.role, operation, row["kind"]) is None:
                why[0] = self._policy.why_denied(actor.role, operation, row["kind"])
                return None
            if operation == "delete":
                if row["dk_subject"] is None:
                    # Its own key goes too: lock it first (key before token, as every writer does).
                    self._keys.lock_data_key(conn, row["data_key_id"])
                if not self.delete_rows(conn, tokens.c.token == token):
                    return None  # another request deleted it first: one delete is acknowledged
                if row["kind"] != "cvv":  # a CVV is never held (PCI DSS 3.3.1)
                    refuse_if_held(conn, row["subject_id"], now, self._macs)
            self._trail.record(conn, [self._event(actor, operation, "allowed", origin, token=token, kind=row["kind"],
                                            subject_id=row["subject_id"], key_id=row["data_key_id"])])
            return self._record(row)

        try:
            record: TokenRecord | None = self._transaction(self._gated(actor, work))
        except VaultError as error:
            self._audit_failure([self._event(actor, operation, "error", origin, token=token, kind=kind,
                                             error_code=error.code)])
            raise
        if record is None:
            denial = self._deny(actor, operation, origin, NotFound("not found"), token=token, kind=kind,
                                detail=f"reason={why[0]}")
            if (kind == "card" and f"reason={why[0]}" == MISS_DETAIL
                    and self._policy.decide(actor.role, operation, "card") is not None):
                # A metadata or delete probe finds live card tokens as well as a detokenize would.
                with contextlib.suppress(VaultError):
                    self._transaction(lambda conn: self._guessing.after_misses(conn, actor, now, origin))
            raise denial
        if operation == "delete":
            drop_deleted_copies(self._engine)
        return record

    # -- deletion and purge ------------------------------------------------------------------

    def delete_rows(self, conn: Connection, condition: Any) -> set[str]:
        """Delete matching tokens and their per-record data keys; returns the tokens deleted."""
        gone = conn.execute(delete(tokens).where(condition).returning(tokens.c.token, tokens.c.data_key_id)).all()
        key_ids = [row[1] for row in gone]
        if key_ids:
            conn.execute(delete(data_keys).where(data_keys.c.id.in_(key_ids), data_keys.c.subject_id.is_(None)))
        return {row[0] for row in gone}

    def purge_expired(self, actor: Actor = SYSTEM) -> int:
        """Delete expired tokens (CVVs above all) and audit the count."""
        now = self._clock()

        def work(conn: Connection) -> int:
            expired = and_(tokens.c.expires_at.is_not(None), tokens.c.expires_at <= now)
            # A CVV is never held: PCI DSS 3.3.1 forbids keeping it past its short TTL, hold or not.
            held = and_(tokens.c.kind != "cvv", tokens.c.subject_id.is_not(None),
                        tokens.c.subject_id.in_(held_subjects(conn, now, self._macs)))
            count = len(self.delete_rows(conn, and_(expired, ~held)))
            # Expired but held: kept (unreadable, being expired) until the hold is released.
            skipped = conn.execute(select(func.count()).select_from(tokens).where(expired, held)).scalar() or 0
            if count:  # not on every 30 s pass while a hold keeps the same expired rows
                self._trail.record(conn, [self._event(actor, "purge", "allowed", Origin(),
                                                      detail=f"purged={count} held={skipped}")])
            return count

        purged: int = self._transaction(work)
        if purged:
            drop_deleted_copies(self._engine)
        return purged

    def maybe_purge(self) -> None:
        """Purge at most every `purge_interval` seconds per process, so short TTLs hold."""
        if time.monotonic() - self._last_purge < self._limits.purge_interval:
            return
        if not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = time.monotonic()
            self.purge_expired()
        except VaultError:
            pass
        finally:
            self._purge_lock.release()

    def check(self) -> None:
        """Readiness: the database answers and the key provider can serve."""
        self._transaction(lambda conn: conn.execute(select(tokens.c.token).limit(1)).all())
        self._keys.check()
