"""Database schema (SQLAlchemy Core); engines are made in vault.storage.engine.

Only ciphertext, wrapped keys, keyed hashes and non-sensitive metadata are stored.
SQLite (WAL) is the embedded default; PostgreSQL is production. Schema changes go
through Alembic (vault/storage/migrations); `metadata` here is the source they are made from.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.expression import Insert

__all__ = [
    "metadata",
    "domain_keys",
    "relay_routes",
    "data_keys",
    "tokens",
    "bin_counts",
    "clients",
    "audit_events",
    "audit_archives",
    "audit_sequence",
    "audit_signing_keys",
    "audit_sink_heads",
    "audit_verify_jobs",
    "subjects",
    "consents",
    "holds",
    "privacy_requests",
    "retained_records",
    "disclosures",
    "key_jobs",
    "operators",
    "operator_sessions",
    "totp_uses",
    "approvals",
    "insert_ignoring_conflict",
    "ignoring_conflict_for",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=naming)

SeqType = BigInteger().with_variant(Integer(), "sqlite")

domain_keys = Table(
    "domain_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("purpose", String(16), nullable=False),
    # Equal to purpose while the key is the active one for it, NULL once retired:
    # the unique constraint makes "one active key per purpose" a database fact.
    Column("active_for", String(16), nullable=True, unique=True),
    Column("wrapped", Text, nullable=False),
    Column("kek_version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True),
)

data_keys = Table(
    "data_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("domain_key_id", String(40), ForeignKey("domain_keys.id"), nullable=False, index=True),
    Column("subject_id", String(128), nullable=True),
    Column("purpose", String(16), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("subject_id", "purpose", name="uq_data_keys_subject_purpose"),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("subject_id", String(128), nullable=True, index=True),
    Column("data_key_id", String(40), ForeignKey("data_keys.id"), nullable=False, index=True),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("lookup", LargeBinary(32), nullable=True, unique=True),
    Column("meta", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True, index=True),
    # Not part of the AAD: only drives retention ("13 months after last use").
    Column("last_used_at", UTCDateTime, nullable=True),
)

# With keep_bin: how many card tokens of each (BIN, length) were ever issued keeping the BIN
# (vault/tokens/bins.py). Never decremented: a deleted token does not free a place.
bin_counts = Table(
    "bin_counts",
    metadata,
    Column("bin", String(6), primary_key=True),
    Column("length", Integer, primary_key=True),
    Column("issued", Integer, nullable=False),
)

clients = Table(
    "clients",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(40), nullable=False),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # Key rotation: the replaced key keeps working until `previous_key_expires_at` (grace period).
    Column("previous_key_hash", LargeBinary(32), nullable=True, index=True),
    Column("previous_key_expires_at", UTCDateTime, nullable=True),
    # Set when the client's detokenize misses looked like guessing (vault.access.guessing): every
    # request is refused (403 client_suspended) until a second admin approves `resume_client`.
    Column("suspended_at", UTCDateTime, nullable=True),
    # HMAC under the `row` domain key over the declared columns (vault.keys.row_mac): an edit never grants.
    Column("row_mac", String(120), nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("role", String(40), nullable=False),
    Column("action", String(40), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("error_code", String(40), nullable=True),
    Column("token", String(64), nullable=True),
    Column("kind", String(16), nullable=True),
    Column("subject_id", String(128), nullable=True),
    Column("purpose", String(32), nullable=True),
    Column("key_id", String(40), nullable=True),
    Column("request_id", String(64), nullable=True),
    Column("source", String(64), nullable=True),
    Column("user_agent", String(256), nullable=True),
    Column("detail", String(256), nullable=True),
    # Tamper evidence: each writer (one per pooled connection of a process) keeps its
    # own chain; mac = HMAC(audit key, prev_mac || event), so verification joins the
    # chains without the service ever serialising on one chain head.
    Column("writer", String(64), nullable=False),
    Column("chain_seq", BigInteger, nullable=False),
    Column("prev_mac", LargeBinary(32), nullable=False),
    Column("mac", LargeBinary(32), nullable=False),
    Column("mac_key_id", String(40), nullable=False),
    # 1: events written before 0016a (MAC without `seq`); 2: the MAC covers every column, `seq` included.
    Column("mac_scheme", SmallInteger, nullable=False, server_default="1"),
    # The entity a one-way fact is about ("client:cli_..", "subject:cust-1", vault.audit.facts), NULL for
    # every other event; under the MAC from scheme 3. Decisions look facts up through the partial index.
    Column("entity", String(160), nullable=True),
    UniqueConstraint("writer", "chain_seq", name="uq_audit_events_writer_chain_seq"),
    Index("ix_audit_events_entity", "entity", "seq", sqlite_where=text("entity IS NOT NULL"),
          postgresql_where=text("entity IS NOT NULL")),
    Index("ix_audit_events_at", "at"),
    Index("ix_audit_events_token", "token"),
    Index("ix_audit_events_subject_id", "subject_id"),
    Index("ix_audit_events_actor", "actor"),
    # The guessing guard counts one client's recent detokenize misses.
    Index("ix_audit_events_actor_at", "actor", "at"),
)

# Where each writer's chain continues after its older events were archived. `record_mac`
# (HMAC under the audit key `mac_key_id`) authenticates the row, so an insider cannot
# forge one to hide a chain prefix; rows from before 0016a are sealed by `tokenvault init`.
audit_archives = Table(
    "audit_archives",
    metadata,
    Column("writer", String(64), primary_key=True),
    Column("chain_seq", BigInteger, nullable=False),
    Column("mac", LargeBinary(32), nullable=False),
    Column("archive", String(255), nullable=False),
    Column("archived_at", UTCDateTime, nullable=False),
    Column("last_seq", BigInteger, nullable=True),
    Column("mac_key_id", String(40), nullable=True),
    Column("record_mac", LargeBinary(32), nullable=True),
)

# The next global `seq` on SQLite (PostgreSQL uses the column's own sequence): an event's
# `seq` is chosen before its MAC is computed, and never reused, even after a deleted tail or
# an archive emptied the table.
audit_sequence = Table(
    "audit_sequence",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("next_seq", BigInteger, nullable=False),
)

# The checkpoint signing key (ed25519 seed wrapped by the key provider) and, per sink, the
# last checkpoint entry written: a sink deleted, truncated or rolled back no longer reaches it.
audit_signing_keys = Table(
    "audit_signing_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("wrapped", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Verification runs as a background job (never inside a request): progress, then the report.
audit_verify_jobs = Table(
    "audit_verify_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("done", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("result", Text, nullable=True),
    # Where the next run resumes (last verified anchored event per chain), MACed under the audit key.
    Column("resume", Text, nullable=True),
    Column("requested_by", String(128), nullable=False),
    Index("ix_audit_verify_jobs_started_at", "started_at"),
)

# The key epoch (issue #18): a counter every key job raises when it rotates or re-keys, and each
# serving process's acknowledgement that it dropped its key caches for that epoch (row-MACed).
# A job then waits only until every live process acknowledged, not the whole cache window.
key_epoch = Table(
    "key_epoch",
    metadata,
    Column("name", String(16), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
)

key_epoch_acks = Table(
    "key_epoch_acks",
    metadata,
    Column("worker", String(80), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("row_mac", String(120), nullable=True),
)

audit_sink_heads = Table(
    "audit_sink_heads",
    metadata,
    Column("sink", String(255), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)


# -- privacy: subjects and their rights (GDPR Art. 15-21) ---------------------------------

subjects = Table(
    "subjects",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("restricted", Boolean, nullable=False, default=False),
    Column("minor", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("erased_at", UTCDateTime, nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)

consents = Table(
    "consents",
    metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("granted", Boolean, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("source", String(128), nullable=False),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)

holds = Table(
    "holds",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("reason", String(500), nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("released_at", UTCDateTime, nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)

privacy_requests = Table(
    "privacy_requests",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("right", String(32), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("outcome", String(500), nullable=True),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("handled_by", String(128), nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)

# What a legal retention rule keeps after erasure: metadata only, never a value.
retained_records = Table(
    "retained_records",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("subject_id", String(128), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("meta", Text, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("retain_until", UTCDateTime, nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)

disclosures = Table(
    "disclosures",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("subject_id", String(128), nullable=True, index=True),
    Column("tokens", Text, nullable=False),
    Column("case_reference", String(128), nullable=False),
    Column("authority", String(200), nullable=False),
    Column("justification", String(1000), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("approved_by", String(128), nullable=True),
    Column("approved_at", UTCDateTime, nullable=True),
    Column("status", String(16), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)


# -- access control: human operators, their sessions, dual control ------------------------

operators = Table(
    "operators",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("role", String(40), nullable=False),
    # argon2id, PHC string (parameters, salt, hash); "!" (matches nothing) until the operator enrols.
    Column("password_hash", String(255), nullable=False),
    # The TOTP seed, sealed under its own data key: never plaintext at rest. Until the operator enrols,
    # a random seed nobody was shown.
    Column("totp_sealed", LargeBinary, nullable=False),
    Column("totp_key_id", String(40), ForeignKey("data_keys.id"), nullable=False),
    # An outstanding one-time enrolment code (vault/access/enrolment.py): a keyed hash, never the code.
    # While set, the operator cannot log in or step up; completing enrolment clears both.
    Column("enrolment_hash", LargeBinary(32), nullable=True, index=True, unique=True),
    Column("enrolment_expires_at", UTCDateTime, nullable=True),
    Column("failed_attempts", Integer, nullable=False),
    Column("locked_until", UTCDateTime, nullable=True),
    # The TOTP steps this operator used that could still match (comma-separated, MACed): a code whose
    # `totp_uses` row an insider deleted is still refused (vault/access/totp.py). NULL: none.
    Column("totp_used_steps", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime, nullable=True),
    # HMAC under the `row` domain key over the declared columns (vault.keys.row_mac): an edit never grants.
    Column("row_mac", String(120), nullable=True),
)

operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("operator_id", String(40), ForeignKey("operators.id"), nullable=False, index=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),  # keyed hash, like API keys
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    # HMAC under the `row` domain key over the declared columns (vault.keys.row_mac): an edit never grants.
    Column("row_mac", String(120), nullable=True),
)

# A TOTP code is accepted once: the primary key refuses a second use of the same time
# step by the same operator, across workers and hosts.
totp_uses = Table(
    "totp_uses",
    metadata,
    Column("operator_id", String(40), ForeignKey("operators.id"), primary_key=True),
    Column("step", BigInteger, primary_key=True, autoincrement=False),
    Column("used_at", UTCDateTime, nullable=False),
)

# Dual control: a sensitive action waits here until a second operator approves it.
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("action", String(40), nullable=False),
    Column("params", Text, nullable=False),  # JSON, non-sensitive (ids, not values)
    Column("requested_by", String(40), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending | executed
    Column("approved_by", String(40), nullable=True),
    Column("approved_at", UTCDateTime, nullable=True),
    Column("result", Text, nullable=True),  # JSON, non-sensitive
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)


# -- relay: routes to partners' APIs -----------------------------------------------------------

# One row per version of a route. The whole configuration (upstream, rules, upstream credentials)
# is sealed under a `relay` data key, bound to (name, version, state, key id): an edited clear
# column, a draft marked approved, or a blob moved to another route fails to open, and the route
# answers as absent. The current route is its highest approved version.
relay_routes = Table(
    "relay_routes",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("state", String(16), nullable=False),  # proposed | approved
    Column("sealed", LargeBinary, nullable=False),
    Column("data_key_id", String(40), ForeignKey("data_keys.id"), nullable=False),
    Column("proposed_by", String(40), nullable=False),
    Column("proposed_at", UTCDateTime, nullable=False),
    Column("approved_by", String(40), nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)


# -- key lifecycle: resumable rewrap and re-encryption jobs ----------------------------------

key_jobs = Table(
    "key_jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # rotate | reencrypt
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("params", Text, nullable=False),
    Column("phase", String(24), nullable=False),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("error", String(200), nullable=True),
    Column("requested_by", String(128), nullable=False),
    # One runner at a time, across processes and hosts: whoever holds an unexpired lease.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("row_mac", String(120), nullable=True),  # vault.keys.row_mac
)


def insert_ignoring_conflict(conn: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING, on SQLite and PostgreSQL alike; execute with rows.

    Races (two requests creating the same deterministic token or subject key) are
    settled by the database's unique constraints, never by locks in Python. Rows go
    as execute() parameters, so the compiled statement is cached; the statement itself is
    built once per dialect and table (its cache key too: issue #21).
    """
    return ignoring_conflict_for(conn.dialect.name, table)


@functools.cache
def ignoring_conflict_for(dialect: str, table: Table) -> Insert:
    """`insert_ignoring_conflict` by dialect name, built once per dialect and table."""
    if dialect == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


