"""The key hierarchy below the KEK: domain keys and data keys.

    KEK (KeyProvider) ─ wraps ─> domain key (one active per purpose, 256-bit)
    domain key ─ wraps ─> data key (one per subject and purpose, or one per record)
    data key ─ seals ─> record

The provider is called only to create a domain key or to unwrap one after a cache
miss, so the KMS sees far less than one call per thousand operations. Unwrapped keys
live only in process memory, in caches bounded in size and time.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from vault.errors import ConfigurationError, DecryptionFailed, IntegrityFailure, KeyServiceUnavailable
from vault.keys.envelope import Cipher, associated_data
from vault.keys.provider import KEY_BYTES, KeyProvider, wrapped_version
from vault.secret import Secret
from vault.storage.schema import data_keys, domain_keys, insert_ignoring_conflict, key_epoch

__all__ = ["KeyHierarchy", "DataKey", "PURPOSES", "EPOCH_NAME", "read_epoch"]

EPOCH_NAME = "keys"


def read_epoch(conn: Connection) -> int:
    """The key epoch (vault.keys.epoch): 0 until a key job first raises it."""
    value = conn.execute(select(key_epoch.c.epoch).where(key_epoch.c.name == EPOCH_NAME)).scalar()
    return int(value) if value is not None else 0

# data: records; cvv: card security codes (own key, PCI DSS 3.3.2); index: keyed
# hashes for deterministic tokens; auth: keyed hashes of credentials; audit: the MACs
# chaining audit events; totp: wraps the data keys that seal operators' TOTP seeds;
# relay: wraps the data keys that seal relay routes (upstream credentials among them);
# row: the MACs of rows that decide access (vault.keys.row_mac).
PURPOSES = ("data", "cvv", "index", "auth", "audit", "totp", "relay", "row")
RECORD_PURPOSES = ("data", "cvv")


def _header(purpose: str, key_id: str, generation: int | None = None) -> bytes:
    """What a domain key's plaintext starts with inside its KMS wrapping (format 3; 2 without a generation).

    The KEK's authenticated encryption (local AES-GCM or Transit) covers it, so a
    wrapped key copied to a row of another id or purpose unwraps to the wrong header
    and is refused: a domain key serves only its own purpose and id, whichever
    provider holds the KEK, without asking the provider for anything it lacks.
    The generation (1 for a purpose's first key, one more at each rotation) says which key of a
    purpose is the newest, so the clear `active_for` column cannot name a retired one.
    """
    if generation is None:
        return f"tokenvault-domain-key|2|{purpose}|{key_id}|".encode()
    return f"tokenvault-domain-key|3|{purpose}|{key_id}|{generation}|".encode()


_FORMAT_3 = b"tokenvault-domain-key|3|"


def _bound(purpose: str, key_id: str, generation: int, key: Secret[bytes]) -> Secret[bytes]:
    return Secret(_header(purpose, key_id, generation) + key.expose())


def _unbound(purpose: str, key_id: str, plain: Secret[bytes]) -> tuple[Secret[bytes], int]:
    """The key and generation inside a plaintext made for this purpose and id; else DecryptionFailed.

    Format 2 (before generations) reads as generation 0: older than any key made or rebound since.
    """
    material = plain.expose()
    head, key = material[:-KEY_BYTES], material[-KEY_BYTES:]
    if len(material) > KEY_BYTES:
        if head == _header(purpose, key_id):
            return Secret(key), 0
        prefix = f"tokenvault-domain-key|3|{purpose}|{key_id}|".encode()
        digits = head[len(prefix):-1]
        if (head.startswith(prefix) and head.endswith(b"|") and digits.isdigit() and len(digits) <= 9
                and head == _header(purpose, key_id, int(digits))):
            return Secret(key), int(digits)
    raise DecryptionFailed()


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class DataKey:
    """An unwrapped data key and the row that stores it wrapped."""

    id: str
    cipher: Cipher
    row: dict[str, Any]


class KeyHierarchy:
    """Creates, wraps and caches domain and data keys; never stores a key unwrapped."""

    def __init__(
        self,
        provider: KeyProvider,
        *,
        cache_seconds: float = 300.0,
        data_key_cache_size: int = 10_000,
        clock: Callable[[], datetime] = _now,
        on_lookup: Callable[[str, bool], None] | None = None,
        epoch_seconds: float = 1.0,
    ) -> None:
        self.provider = provider
        # The key epoch: cached keys are used only while this process confirmed the epoch within
        # `epoch_seconds` (read here at most once per interval, or by vault.keys.epoch's heartbeat);
        # any change of it drops every cache, so a rotation reaches this process within a second.
        self.epoch_seconds = epoch_seconds
        self._epoch: int | None = None
        self._epoch_checked = -math.inf  # time.monotonic() of the read that confirmed `_epoch`
        self._on_lookup = on_lookup or (lambda _cache, _hit: None)
        self._clock = clock
        self._lock = threading.Lock()
        ttl = max(cache_seconds, 0.001)
        # Keyed by (id, purpose): a purpose asked of a key made for another never hits.
        self._domain: TTLCache[tuple[str, str], Secret[bytes]] = TTLCache(maxsize=64, ttl=ttl)
        self._domain_ciphers: TTLCache[tuple[str, str], Cipher] = TTLCache(maxsize=64, ttl=ttl)
        self._active: TTLCache[str, str] = TTLCache(maxsize=16, ttl=ttl)
        self._generations: TTLCache[tuple[str, str], int] = TTLCache(maxsize=64, ttl=ttl)
        # The newest generation of a purpose the audit trail witnessed (set by the wiring to
        # vault.audit.facts.witnessed_generation): a newer key hidden in the database is not forgotten.
        self.witnessed: Callable[[Connection, str], int] | None = None
        # Keyed by id *and* wrapped bytes: a data key rewrapped or re-keyed elsewhere misses here.
        self._data: TTLCache[tuple[str, bytes], Cipher] = TTLCache(maxsize=data_key_cache_size, ttl=ttl)

    # -- key epoch ------------------------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def _fresh(self) -> bool:
        return time.monotonic() - self._epoch_checked < self.epoch_seconds

    def observe_epoch(self, epoch: int, read_at: float) -> None:
        """`epoch` was read at monotonic time `read_at`: drop every cached key if it changed."""
        with self._lock:
            if epoch == self._epoch:
                self._epoch_checked = max(self._epoch_checked, read_at)
                return
            # A different value, newer or older (an edit, or a read that raced a newer one): dropping
            # is always safe; only a read at least as recent as the last confirmation replaces it.
            self._domain.clear()
            self._domain_ciphers.clear()
            self._active.clear()
            self._generations.clear()
            self._data.clear()
            if self._epoch is None or read_at >= self._epoch_checked:
                self._epoch = epoch
                self._epoch_checked = read_at

    def _gate(self, conn: Connection) -> None:
        """Before any cached key is used: confirm the epoch if the last confirmation is too old."""
        if not self._fresh():
            read_at = time.monotonic()
            self.observe_epoch(read_epoch(conn), read_at)

    # -- domain keys ----------------------------------------------------------------------

    def ensure_domain_keys(self, conn: Connection) -> list[str]:
        """Make sure each purpose has an active domain key; returns the ids created."""
        created = []
        for purpose in PURPOSES:
            existing = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == purpose)).first()
            if existing is None:
                created.append(self._create_domain_key(conn, purpose))
        return created

    def _create_domain_key(self, conn: Connection, purpose: str) -> str:
        key_id = _new_id("dom")
        key = Secret(secrets.token_bytes(KEY_BYTES))
        generation = max(self._generations_of(conn, purpose).values(), default=0) + 1
        wrapped = self.provider.wrap([_bound(purpose, key_id, generation, key)])[0]
        conn.execute(
            insert(domain_keys).values(
                id=key_id,
                purpose=purpose,
                active_for=purpose,
                wrapped=wrapped,
                kek_version=wrapped_version(wrapped),
                created_at=self._clock(),
            )
        )
        self._remember(key_id, purpose, key, generation)
        return key_id

    def rotate_domain_key(self, conn: Connection, purpose: str) -> str:
        """Retire the active key of `purpose` and create a new one (old one still opens)."""
        conn.execute(
            update(domain_keys)
            .where(domain_keys.c.active_for == purpose)
            .values(active_for=None, retired_at=self._clock())
        )
        self._active.pop(purpose, None)
        return self._create_domain_key(conn, purpose)

    def rotate_witnessed(self, conn: Connection, purpose: str) -> str:
        """Rotate `purpose`'s key; returns "purpose:generation" for the caller's audit event, which witnesses the
        newest generation (vault.audit.facts), so a newer key hidden in the database cannot bring an old one back."""
        new_id = self.rotate_domain_key(conn, purpose)
        return f"{purpose}:{self.generation(conn, new_id, purpose)}"

    def _active_id(self, conn: Connection, purpose: str) -> str:
        """The id of `purpose`'s active key: the row marked active, only if its wrapping has the newest generation.

        `active_for` is a clear column: moved onto a retired key by someone with the database, it would
        make new data keys wrap under that key. Each key's generation is inside its KMS wrapping, so
        the move is refused (IntegrityFailure) instead. Costs one batched unwrap of the purpose's
        retired keys per cache window, none for a purpose with a single key.
        """
        self._gate(conn)
        key_id = self._active.get(purpose)
        if key_id is None:
            row = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == purpose)).first()
            if row is None:
                key_id = self._create_domain_key(conn, purpose)
            else:
                key_id = str(row[0])
                generations = self._generations_of(conn, purpose)
                if key_id not in generations:
                    raise DecryptionFailed()
                newest = generations.pop(key_id)
                if newest < 1 or any(other >= newest for other in generations.values()) or (
                        self.witnessed is not None and newest < self.witnessed(conn, purpose)):
                    raise IntegrityFailure("domain_keys")
            self._active[purpose] = key_id
        return key_id

    def generation(self, conn: Connection, key_id: str, purpose: str) -> int:
        """The generation inside key `key_id`'s wrapping (DecryptionFailed if it does not open as `purpose`)."""
        found = self._generations_of(conn, purpose).get(key_id)
        if found is None:
            raise DecryptionFailed()
        return found

    def _generations_of(self, conn: Connection, purpose: str) -> dict[str, int]:
        """The keys of `purpose` that open as such, with the generation each wrapping carries.

        One batched unwrap of the uncached. A row that does not open for its id and purpose (a
        copy, a corrupted wrapping) is no key of this purpose and is left out, as every use of it is.
        """
        rows = conn.execute(select(domain_keys.c.id, domain_keys.c.wrapped)
                            .where(domain_keys.c.purpose == purpose)).all()
        found: dict[str, int] = {}
        missing = []
        for row in rows:
            generation = self._generations.get((str(row.id), purpose))
            if generation is not None and (str(row.id), purpose) in self._domain:
                found[str(row.id)] = generation
            else:
                missing.append(row)
        if missing:
            for row, plain in zip(missing, self.provider.unwrap([r.wrapped for r in missing]), strict=True):
                try:
                    key, generation = _unbound(purpose, str(row.id), plain if plain is not None else Secret(b""))
                except DecryptionFailed:
                    continue
                self._remember(str(row.id), purpose, key, generation)
                found[str(row.id)] = generation
        return found

    def _remember(self, key_id: str, purpose: str, key: Secret[bytes], generation: int) -> None:
        with self._lock:
            self._domain[(key_id, purpose)] = key
            self._generations[(key_id, purpose)] = generation

    def _domain_secret(self, conn: Connection, key_id: str, purpose: str) -> Secret[bytes]:
        """The domain key `key_id`, only if its row and its wrapping both say `purpose`."""
        self._gate(conn)
        key = self._domain.get((key_id, purpose))
        self._on_lookup("domain", key is not None)
        if key is not None:
            return key
        row = conn.execute(select(domain_keys.c.wrapped).where(domain_keys.c.id == key_id,
                                                               domain_keys.c.purpose == purpose)).first()
        if row is None:
            raise DecryptionFailed()
        unwrapped = self.provider.unwrap([row[0]])[0]
        if unwrapped is None:
            raise DecryptionFailed()
        key, generation = _unbound(purpose, key_id, unwrapped)
        self._remember(key_id, purpose, key, generation)
        return key

    def domain_cipher(self, conn: Connection, key_id: str, purpose: str) -> Cipher:
        self._gate(conn)
        cipher = self._domain_ciphers.get((key_id, purpose))
        if cipher is None:
            # Setting up an AES key costs more than sealing one data key with it: keep it, as long as the secret.
            cipher = Cipher(self._domain_secret(conn, key_id, purpose))
            with self._lock:
                self._domain_ciphers[(key_id, purpose)] = cipher
        else:
            self._on_lookup("domain", True)
        return cipher

    def hmac_key(self, conn: Connection, purpose: str) -> Secret[bytes]:
        """Key for keyed hashes (PCI DSS 3.5.1.1), held like every other domain key."""
        return self._domain_secret(conn, self._active_id(conn, purpose), purpose)

    def cached_hmac_key(self, purpose: str) -> Secret[bytes] | None:
        """The active key of `purpose` if this process holds it already, else None (no I/O)."""
        if not self._fresh():
            return None  # the caller takes the path that confirms the epoch
        key_id = self._active.get(purpose)
        return self._domain.get((key_id, purpose)) if key_id is not None else None

    def active_hmac_key(self, conn: Connection, purpose: str) -> tuple[str, Secret[bytes]]:
        key_id = self._active_id(conn, purpose)
        return key_id, self._domain_secret(conn, key_id, purpose)

    def hmac_key_by_id(self, conn: Connection, key_id: str, purpose: str) -> Secret[bytes]:
        """A possibly retired key of `purpose`, to verify what it once signed; DecryptionFailed if not of it."""
        return self._domain_secret(conn, key_id, purpose)

    def bind_legacy_wrappings(self, conn: Connection) -> int:
        """Upgrade: rewrap older domain keys into format 3, purpose, id and generation bound in.

        Run by `tokenvault init`. Format 1 (bare 32 bytes) and format 2 (no generation) keys are
        rewrapped; the key each purpose's row marks active becomes generation 1, the others 0. That
        trusts `active_for` once, at the upgrade, as the row MAC backfill trusts the rows. Refuses
        (ConfigurationError) when two rows unwrap to the same material: a wrapped key copied under
        another id or purpose before the upgrade would otherwise be blessed here; an operator must
        decide which is real. Returns how many rows were rewrapped.
        """
        rows = conn.execute(select(domain_keys.c.id, domain_keys.c.purpose, domain_keys.c.wrapped,
                                   domain_keys.c.active_for).order_by(domain_keys.c.created_at)).all()
        if not rows:
            return 0
        plains = self.provider.unwrap([row.wrapped for row in rows])
        seen: dict[bytes, str] = {}
        legacy: list[tuple[Any, Secret[bytes], int]] = []
        for row, plain in zip(rows, plains, strict=True):
            if plain is None:
                continue  # unusable already (tampered, or below the KEK's minimum version): stays failing
            if len(plain.expose()) == KEY_BYTES:
                key = plain
            else:
                try:
                    key, _generation = _unbound(row.purpose, row.id, plain)
                except DecryptionFailed:
                    continue
            material = key.expose()
            if material in seen:
                raise ConfigurationError(f"domain keys {seen[material]} and {row.id} hold the same key: one was "
                                         "copied by someone with database access; remove the copy, then rerun")
            seen[material] = row.id
            if not plain.expose().startswith(_FORMAT_3):
                legacy.append((row, key, 1 if row.active_for == row.purpose else 0))
        if not legacy:
            return 0
        if len(legacy) < len(seen):  # an upgraded vault: older wrappings now can only have been written back
            raise ConfigurationError("domain keys " + ", ".join(str(row.id) for row, _key, _gen in legacy)
                                     + " have wrappings from before the upgrade next to upgraded ones: written back "
                                       "by someone with database access; restore the current rows, then rerun")
        rewrapped = self.provider.wrap([_bound(row.purpose, row.id, generation, key)
                                        for row, key, generation in legacy])
        for (row, _key, _generation), wrapped in zip(legacy, rewrapped, strict=True):
            conn.execute(update(domain_keys).where(domain_keys.c.id == row.id)
                         .values(wrapped=wrapped, kek_version=wrapped_version(wrapped)))
        return len(legacy)

    # -- data keys -------------------------------------------------------------------------

    @staticmethod
    def _wrap_aad(key_id: str, domain_key_id: str, subject_id: str | None, purpose: str) -> bytes:
        return associated_data("dk", id=key_id, domain=domain_key_id, subject=subject_id, purpose=purpose)

    def new_data_key(self, conn: Connection, purpose: str, subject_id: str | None) -> DataKey:
        """A fresh data key, wrapped under the active domain key of `purpose`."""
        domain_id = self._active_id(conn, purpose)
        return self._data_key_under(domain_id, self.domain_cipher(conn, domain_id, purpose), purpose, subject_id)

    def new_record_key_from_memory(self, purpose: str) -> DataKey | None:
        """Like `new_data_key` for one record, if the domain key is in memory; None rather than any I/O.

        Lets callers seal records before they take the database's write lock.
        """
        if not self._fresh():
            return None
        domain_id = self._active.get(purpose)
        domain = self._domain_ciphers.get((domain_id, purpose)) if domain_id is not None else None
        if domain_id is None or domain is None:
            return None
        self._on_lookup("domain", True)
        return self._data_key_under(domain_id, domain, purpose, None)

    def _data_key_under(self, domain_id: str, domain: Cipher, purpose: str, subject_id: str | None) -> DataKey:
        key_id = _new_id("dk")
        material = Secret(secrets.token_bytes(32))
        wrapped = domain.seal(material.expose(), self._wrap_aad(key_id, domain_id, subject_id, purpose))
        row = {
            "id": key_id,
            "domain_key_id": domain_id,
            "subject_id": subject_id,
            "purpose": purpose,
            "wrapped": wrapped,
            "created_at": self._clock(),
        }
        return DataKey(key_id, Cipher(material), row)

    def subject_data_key(self, conn: Connection, subject_id: str, purpose: str) -> DataKey:
        """The subject's data key for `purpose`, created once even under concurrent requests.

        Lock rule (PostgreSQL, READ COMMITTED): whoever seals under a data key holds its row
        FOR KEY SHARE until commit (the lock the foreign key takes anyway, only earlier);
        whoever changes a data key's material or deletes it holds the row FOR UPDATE
        (`lock_data_key`), which waits for every KEY SHARE holder. So a re-key or an erasure waits for every in-flight
        record sealed under the old material, and then sees it; a tokenize that waited reads
        the new material (or finds the key gone and makes a new one). Order everywhere:
        subject row, then data-key rows, then token rows. SQLite's one writer serialises anyway.
        """
        found = select(data_keys).where(data_keys.c.subject_id == subject_id, data_keys.c.purpose == purpose)
        row = conn.execute(found.with_for_update(read=True, key_share=True)).mappings().first()
        if row is None:
            key = self.new_data_key(conn, purpose, subject_id)
            inserted = conn.execute(insert_ignoring_conflict(conn, data_keys), [key.row]).rowcount
            if inserted == 1:
                self._data[(key.id, bytes(key.row["wrapped"]))] = key.cipher
                return key
            row = conn.execute(found.with_for_update(read=True, key_share=True)).mappings().one()
        return DataKey(row["id"], self.open_data_keys(conn, [dict(row)], (purpose,))[row["id"]], dict(row))

    def subject_data_keys(self, conn: Connection, slots: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DataKey]:
        """`subject_data_key` for many (subject, purpose) slots: one locking read, one insert of the missing.

        The rows are locked FOR KEY SHARE in id order, as `subject_data_key` locks one.
        """
        wanted = sorted(set(slots))
        if not wanted:
            return {}
        subjects = sorted({subject for subject, _ in wanted})
        query = (select(data_keys).where(data_keys.c.subject_id.in_(subjects), data_keys.c.subject_id.is_not(None))
                 .order_by(data_keys.c.id).with_for_update(read=True, key_share=True))
        rows = {(r["subject_id"], r["purpose"]): dict(r) for r in conn.execute(query).mappings()}
        out: dict[tuple[str, str], DataKey] = {}
        missing = [slot for slot in wanted if slot not in rows]
        if missing:
            fresh = {slot: self.new_data_key(conn, slot[1], slot[0]) for slot in missing}
            inserted = conn.execute(insert_ignoring_conflict(conn, data_keys).returning(data_keys.c.id),
                                    [key.row for key in fresh.values()]).scalars().all()
            for slot, key in fresh.items():
                if key.id in set(inserted):
                    self._data[(key.id, bytes(key.row["wrapped"]))] = key.cipher
                    out[slot] = key
                else:  # another request created it first: use (and lock) theirs
                    out[slot] = self.subject_data_key(conn, slot[0], slot[1])
        present = [rows[slot] for slot in wanted if slot in rows]
        ciphers = self.open_data_keys(conn, present)
        for row in present:
            out[(row["subject_id"], row["purpose"])] = DataKey(row["id"], ciphers[row["id"]], row)
        return out

    @staticmethod
    def lock_data_key(conn: Connection, key_id: str) -> dict[str, Any] | None:
        """The data-key row, locked FOR UPDATE until commit (see `subject_data_key`); None if gone."""
        row = conn.execute(select(data_keys).where(data_keys.c.id == key_id).with_for_update()).mappings().first()
        return None if row is None else dict(row)

    def open_data_keys(self, conn: Connection, rows: Iterable[dict[str, Any]],
                       purposes: Collection[str] = PURPOSES) -> dict[str, Cipher]:
        """Unwrap data-key rows (id, domain_key_id, subject_id, purpose, wrapped) into ciphers.

        Only keys of `purposes` open (DecryptionFailed otherwise), each under a domain key
        of its own purpose: a row pointed at another kind of key never yields a cipher.
        """
        self._gate(conn)
        out: dict[str, Cipher] = {}
        for row in rows:
            if row["purpose"] not in purposes:
                raise DecryptionFailed()
            key_id = row["id"]
            if key_id in out:
                continue
            slot = (key_id, bytes(row["wrapped"]))
            cached = self._data.get(slot)
            if row["subject_id"] is not None:
                self._on_lookup("data", cached is not None)
            if cached is not None:
                out[key_id] = cached
                continue
            domain = self.domain_cipher(conn, row["domain_key_id"], row["purpose"])
            aad = self._wrap_aad(key_id, row["domain_key_id"], row["subject_id"], row["purpose"])
            cipher = Cipher(Secret(domain.open(row["wrapped"], aad)))
            if row["subject_id"] is not None:
                self._data[slot] = cipher
            out[key_id] = cipher
        return out

    def wrap_data_key(self, conn: Connection, row: dict[str, Any], material: Secret[bytes],
                      domain_key_id: str) -> bytes:
        """Wrap data-key material for `row` (id, subject_id, purpose) under a given domain key."""
        domain = self.domain_cipher(conn, domain_key_id, row["purpose"])
        return domain.seal(material.expose(), self._wrap_aad(row["id"], domain_key_id, row["subject_id"],
                                                             row["purpose"]))

    def rewrap_under_active(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[tuple[str, bytes]]:
        """For each data-key row: (active domain key id of its purpose, its material wrapped under it).

        Same material, so no record changes; DecryptionFailed if a row was tampered with. Each
        domain cipher is looked up once per call, not once per key (epochs move every key).
        """
        ciphers: dict[str, Cipher] = {}
        targets: dict[str, str] = {}
        out = []
        for row in rows:
            source = ciphers.get(row["domain_key_id"]) or ciphers.setdefault(
                row["domain_key_id"], self.domain_cipher(conn, row["domain_key_id"], row["purpose"]))
            target_id = targets.get(row["purpose"]) or targets.setdefault(row["purpose"],
                                                                          self._active_id(conn, row["purpose"]))
            target = ciphers.get(target_id) or ciphers.setdefault(
                target_id, self.domain_cipher(conn, target_id, row["purpose"]))
            material = source.open(row["wrapped"], self._wrap_aad(row["id"], row["domain_key_id"], row["subject_id"],
                                                                  row["purpose"]))
            out.append((target_id, target.seal(material, self._wrap_aad(row["id"], target_id, row["subject_id"],
                                                                        row["purpose"]))))
        return out

    def unwrap_data_key(self, conn: Connection, row: dict[str, Any]) -> Secret[bytes]:
        """The material of a data-key row; DecryptionFailed if it was tampered with."""
        domain = self.domain_cipher(conn, row["domain_key_id"], row["purpose"])
        aad = self._wrap_aad(row["id"], row["domain_key_id"], row["subject_id"], row["purpose"])
        return Secret(domain.open(row["wrapped"], aad))

    def active_domain_key_id(self, conn: Connection, purpose: str) -> str:
        return self._active_id(conn, purpose)

    def forget(self, key_ids: Sequence[str]) -> None:
        """Drop unwrapped copies of destroyed keys from this process's memory."""
        doomed = set(key_ids)
        with self._lock:
            for data_slot in [slot for slot in list(self._data) if slot[0] in doomed]:
                self._data.pop(data_slot, None)
            for domain_slot in [slot for slot in list(self._domain) if slot[0] in doomed]:
                self._domain.pop(domain_slot, None)
            for cipher_slot in [slot for slot in list(self._domain_ciphers) if slot[0] in doomed]:
                self._domain_ciphers.pop(cipher_slot, None)

    def check(self) -> None:
        try:
            self.provider.check()
        except KeyServiceUnavailable:
            raise
        except Exception as exc:  # a provider bug must still read as "not ready"
            raise KeyServiceUnavailable("key provider check failed") from exc

