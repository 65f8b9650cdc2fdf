"""Relay routes: what a route may reach and carry, validated, sealed, versioned, under dual control.

A route is one document (upstream, methods, path patterns, roles, purposes, where which kinds may
be substituted, upstream credentials, limits, response protection; for inbound routes the fields
to tokenize, the allowed origins and the publishable key's hash). Each change is a new version,
sealed whole under a `relay` data key with the associated data binding route name, version, state
and key id. A change is first `proposed`; a second admin's approval (vault/access/approvals.py,
action `relay_route`) re-seals it as `approved`. The current route is its highest approved
version that opens: a draft an insider marks approved, or a blob moved between rows or routes,
fails to open and the route answers as absent (deny by default).

Not yet covered: an insider deleting the newest approved version (say, the one that disabled a
route) brings back the one before. Freshness needs an anchor outside the database (design notes
section 8, issue #15).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from vault.access.policy import NO_PLAINTEXT_ROLES, PURPOSES, Policy
from vault.audit.facts import check_route
from vault.errors import Conflict, DecryptionFailed, NotFound, ValidationFailed
from vault.keys.envelope import associated_data
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.row_mac import RowMacs
from vault.relay.addresses import Upstream, check_address, check_pattern, parse_upstream
from vault.secret import Secret
from vault.storage.schema import data_keys, relay_routes

__all__ = ["RouteConfig", "Route", "RouteBook", "publishable_key_hash", "check_publishable_key", "parse_config", "NAME"]

NAME = re.compile(r"^[a-z][a-z0-9-]{1,39}$")
KindName = Literal["card", "cvv", "address", "email", "phone", "name", "text"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Never forwarded from a caller, never returned from an upstream: the vault's own credentials,
# hop-by-hop headers, and what would let a caller steer the connection.
_FORBIDDEN_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "host", "connection", "keep-alive",
    "transfer-encoding", "te", "trailer", "upgrade", "content-length", "expect", "forwarded",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-totp", "x-tokenvault-purpose",
    "x-tokenvault-publishable-key", "proxy-connection", "location", "www-authenticate", "accept-encoding",
    "content-encoding",
})
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_ORIGIN = re.compile(r"^https://[a-z0-9.-]{1,253}(:[0-9]{1,5})?$")


class UpstreamAuth(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["none", "bearer", "mtls"] = "none"
    bearer: str | None = Field(default=None, min_length=16, max_length=4096)
    client_cert_pem: str | None = Field(default=None, max_length=65536)
    client_key_pem: str | None = Field(default=None, max_length=65536)

    @model_validator(mode="after")
    def _complete(self) -> UpstreamAuth:
        if self.type == "bearer" and (not self.bearer or any(c in self.bearer for c in "\r\n\x00 ")):
            raise ValueError("bearer auth needs a bearer secret (16+ characters, no spaces or line breaks)")
        if self.type == "mtls":
            if not self.client_cert_pem or not self.client_key_pem:
                raise ValueError("mtls auth needs client_cert_pem and client_key_pem")
            try:
                x509.load_pem_x509_certificate(self.client_cert_pem.encode())
                load_pem_private_key(self.client_key_pem.encode(), password=None)
            except (ValueError, TypeError):
                raise ValueError("mtls client certificate or key is not valid PEM") from None
        if self.type != "bearer" and self.bearer:
            raise ValueError("bearer is set but type is not bearer")
        return self


class ResponseField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(pattern=r"^[A-Za-z0-9_*-]{1,64}(\.[A-Za-z0-9_*-]{1,64}){0,15}$")
    action: Literal["tokenize", "redact"] = "redact"
    kind: KindName = "text"


class InboundField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}$")
    kind: KindName


class RouteConfig(BaseModel):
    """What an admin writes; refused with the reason when unsafe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME.pattern)
    direction: Literal["outbound", "inbound"]
    upstream: str
    internal: bool = False  # may reach private, loopback and link-local addresses
    ca_pem: str | None = Field(default=None, max_length=262144)
    methods: tuple[Method, ...] = Field(default=("POST",), min_length=1)
    paths: tuple[str, ...] = Field(min_length=1, max_length=50)
    roles: tuple[str, ...] = ()
    purposes: tuple[Literal["payment", "fulfillment", "support", "marketing", "legal"], ...] = ()
    substitute: dict[Literal["body", "header"], tuple[KindName, ...]] = {}
    forward_headers: tuple[str, ...] = ()
    return_headers: tuple[str, ...] = ()
    auth: UpstreamAuth = UpstreamAuth()
    connect_timeout: float = Field(default=3.0, gt=0, le=10)
    timeout: float = Field(default=10.0, gt=0, le=60)
    max_body_bytes: int = Field(default=65536, ge=1, le=1 << 20)
    max_response_bytes: int = Field(default=1 << 20, ge=1, le=8 << 20)
    response_fields: tuple[ResponseField, ...] = ()
    tokenize_role: str | None = None
    inbound_fields: tuple[InboundField, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    enabled: bool = True

    @field_validator("paths")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                check_pattern(pattern)
            except ValidationFailed as error:
                raise ValueError(error.rule) from None
        return value

    @field_validator("forward_headers", "return_headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _HEADER_NAME.match(name) or name in _FORBIDDEN_HEADERS:
                raise ValueError("headers must be lowercase names and may not be credentials, hop-by-hop or "
                                 "routing headers: those may not be relayed")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not all(_ORIGIN.match(origin) for origin in value):
            raise ValueError("origins must be exact https://host[:port] values")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RouteConfig:
        try:
            upstream = parse_upstream(self.upstream)
            if upstream.is_literal:
                check_address(upstream.host, internal=self.internal)
        except ValidationFailed as error:
            raise ValueError(f"upstream {error.rule}") from None
        if self.ca_pem is not None:
            try:
                x509.load_pem_x509_certificates(self.ca_pem.encode())
            except ValueError:
                raise ValueError("ca_pem is not a PEM certificate bundle") from None
        if self.direction == "outbound":
            if not self.roles or not self.purposes:
                raise ValueError("an outbound route needs the roles and purposes it serves")
            if self.inbound_fields or self.allowed_origins:
                raise ValueError("inbound_fields and allowed_origins belong to inbound routes")
            if set(self.roles) & set(NO_PLAINTEXT_ROLES):
                raise ValueError("admin and auditor may never see plaintext, so never relay it")
        else:
            if self.roles or self.purposes or self.substitute:
                raise ValueError("an inbound route substitutes nothing: no roles, purposes or substitute")
            if not self.inbound_fields or not self.allowed_origins or not self.tokenize_role:
                raise ValueError("an inbound route needs inbound_fields, allowed_origins and a tokenize_role")
        if any(f.action == "tokenize" for f in self.response_fields) and not self.tokenize_role:
            raise ValueError("response fields that tokenize need a tokenize_role")
        if any(f.kind in ("card", "cvv") and f.action == "tokenize" for f in self.response_fields):
            raise ValueError("response fields cannot be tokenized as card or cvv (no expiry; CVVs never "
                             "come back): redact them")
        if "header" in self.substitute and "cvv" in self.substitute["header"]:
            raise ValueError("a CVV may never travel in a header (headers get logged)")
        return self

    def check_against(self, policy: Policy) -> None:
        """Refuse roles the policy does not define or that could not use what the route offers."""
        for role in self.roles:
            if not policy.has_role(role) or not policy.may_use(role, "detokenize"):
                raise ValidationFailed("roles", "must be roles of the policy that may detokenize")
        if self.tokenize_role is not None:
            kinds = {f.kind for f in self.inbound_fields} | {f.kind for f in self.response_fields
                                                            if f.action == "tokenize"}
            for kind in kinds:
                if policy.decide(self.tokenize_role, "tokenize", kind) is None:
                    raise ValidationFailed("tokenize_role", f"may not tokenize {kind}")
        for purpose in self.purposes:
            assert purpose in PURPOSES


@dataclass(frozen=True)
class Route:
    """An approved route as the relay uses it."""

    config: RouteConfig
    version: int
    publishable_key_sha256: str | None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def upstream(self) -> Upstream:
        return parse_upstream(self.config.upstream)

    @property
    def bearer(self) -> Secret[str] | None:
        auth = self.config.auth
        return Secret(auth.bearer) if auth.type == "bearer" and auth.bearer else None

    def public(self) -> dict[str, Any]:
        """The route without its secrets (bearer, client key)."""
        doc = self.config.model_dump(mode="json")
        doc["auth"] = {"type": self.config.auth.type,
                       **({"client_cert_pem": self.config.auth.client_cert_pem}
                          if self.config.auth.type == "mtls" else {})}
        return {**doc, "version": self.version, "has_publishable_key": self.publishable_key_sha256 is not None}


def publishable_key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_config(document: Any) -> RouteConfig:
    """A route document, validated; the reason names the rule, never a submitted value."""
    try:
        return RouteConfig.model_validate(document)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "route"
        raise ValidationFailed(where, str(first["msg"]).removeprefix("Value error, ")) from None


def _aad(name: str, version: int, state: str, key_id: str) -> bytes:
    return associated_data("relay_route", name=name, version=version, state=state, key=key_id)


_OPENED_MAX = 256


class RouteBook:
    """Storage of routes: propose, approve, read the current version. Callers hold the transaction."""

    def __init__(self, keys: KeyHierarchy, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._keys = keys
        # Route rows are MACed too (vault.keys.row_mac): the AAD binds a blob to its row, the MAC binds
        # the row's clear columns, and reading the current version checks every newer one it passes.
        self._macs = RowMacs(keys)
        self._clock = clock
        # Opened approved versions by (name, version, key id, SHA-256 of the sealed blob): a relay call
        # reads the row but neither unwraps the data key nor decrypts and validates the route again.
        # A blob changed in the database has another digest and is opened (and checked) afresh.
        self._opened: dict[tuple[str, int, str, bytes], Route] = {}

    def propose(self, conn: Connection, actor_id: str, config: RouteConfig, *,
                new_publishable_key: bool = False) -> tuple[int, str | None]:
        """Store a sealed draft as the next version; returns it and a new publishable key (shown once)."""
        current = self.current(conn, config.name, missing_ok=True)
        key: str | None = None
        key_hash = current.publishable_key_sha256 if current else None
        if config.direction == "inbound" and (new_publishable_key or key_hash is None):
            key = "pk_" + secrets.token_urlsafe(32)
            key_hash = publishable_key_hash(key)
        if config.direction == "outbound":
            key_hash = None
        latest = conn.execute(select(func.max(relay_routes.c.version))
                              .where(relay_routes.c.name == config.name)).scalar()
        version = int(latest or 0) + 1
        data_key = self._keys.new_data_key(conn, "relay", None)
        conn.execute(insert(data_keys), [data_key.row])
        document = json.dumps({"config": config.model_dump(mode="json"), "publishable_key_sha256": key_hash},
                              sort_keys=True).encode()
        try:
            self._macs.insert(conn, relay_routes, {
                "name": config.name, "version": version, "state": "proposed", "data_key_id": data_key.id,
                "sealed": data_key.cipher.seal(document, _aad(config.name, version, "proposed", data_key.id)),
                "proposed_by": actor_id, "proposed_at": self._clock(), "approved_by": None})
        except IntegrityError:  # the (name, version) key settles two proposals at once
            raise Conflict("another change of this route was proposed at the same time") from None
        return version, key

    def check_draft(self, conn: Connection, name: str, version: int) -> None:
        row = conn.execute(select(relay_routes).where(relay_routes.c.name == name,
                                                      relay_routes.c.version == version)).mappings().first()
        if row is not None:
            self._macs.check(conn, relay_routes, row)
        if row is None or row["state"] != "proposed":
            raise NotFound("no such proposed route version")

    def approve(self, conn: Connection, actor_id: str, name: str, version: int) -> Route:
        """Re-seal a draft as approved; refused if a newer version is already approved."""
        row = conn.execute(select(relay_routes).where(relay_routes.c.name == name, relay_routes.c.version == version)
                           .with_for_update()).mappings().first()
        if row is not None:
            self._macs.check(conn, relay_routes, row)
        if row is None or row["state"] != "proposed":
            raise NotFound("no such proposed route version")
        newest = self._approved_row(conn, name)
        if newest is not None and int(newest["version"]) > version:
            raise Conflict("a newer version of this route is already approved")
        cipher = self._cipher(conn, row["data_key_id"])
        document = cipher.open(row["sealed"], _aad(name, version, "proposed", row["data_key_id"]))
        taken = self._macs.update(conn, relay_routes, (name, version), {
            "state": "approved", "approved_by": actor_id,
            "sealed": cipher.seal(document, _aad(name, version, "approved", row["data_key_id"]))},
            relay_routes.c.state == "proposed")
        if not taken:
            raise Conflict("this route version was already decided")
        return self._route(document, version)

    def _cipher(self, conn: Connection, key_id: str) -> Any:
        key_row = conn.execute(select(data_keys).where(data_keys.c.id == key_id)).mappings().first()
        if key_row is None:
            raise DecryptionFailed()
        return self._keys.open_data_keys(conn, [dict(key_row)])[key_id]

    @staticmethod
    def _route(document: bytes, version: int) -> Route:
        loaded = json.loads(document)
        return Route(config=RouteConfig.model_validate(loaded["config"]), version=version,
                     publishable_key_sha256=loaded["publishable_key_sha256"])

    def current(self, conn: Connection, name: str, *, missing_ok: bool = False) -> Route | None:
        """The highest approved version that opens; NotFound (or None) otherwise."""
        row = self._approved_row(conn, name) if NAME.match(name) else None
        if row is None:
            if missing_ok:
                return None
            raise NotFound("no such route")
        # The newest approved version deleted brings the previous one back: the trail knows the newest.
        check_route(conn, self._keys, name, int(row["version"]))
        slot = (name, int(row["version"]), str(row["data_key_id"]), hashlib.sha256(row["sealed"]).digest())
        if (opened := self._opened.get(slot)) is not None:
            return opened
        try:
            document = self._cipher(conn, row["data_key_id"]).open(
                row["sealed"], _aad(name, row["version"], "approved", row["data_key_id"]))
        except DecryptionFailed:
            raise NotFound("no such route") from None
        route = self._route(document, int(row["version"]))
        if len(self._opened) >= _OPENED_MAX:
            self._opened.clear()  # routes are few; this only bounds memory against many versions
        self._opened[slot] = route
        return route

    @staticmethod
    def current_version(conn: Connection, name: str) -> int | None:
        """The highest approved version of `name` (what `current` would open), or None."""
        found = conn.execute(select(func.max(relay_routes.c.version)).where(
            relay_routes.c.name == name, relay_routes.c.state == "approved")).scalar()
        return int(found) if found is not None else None

    def _approved_row(self, conn: Connection, name: str) -> Any | None:
        """The highest approved version's row, after checking its MAC and every newer version's.

        An approved version marked `proposed` in the database (or a draft's state edited) would roll
        the route back to an older configuration: the newer rows are read and checked, never skipped.
        """
        for row in conn.execute(select(relay_routes).where(relay_routes.c.name == name)
                                .order_by(relay_routes.c.version.desc())).mappings():
            self._macs.check(conn, relay_routes, row)
            if row["state"] == "approved":
                return row
        return None

    def names(self, conn: Connection) -> list[str]:
        rows = conn.execute(select(relay_routes.c.name).where(relay_routes.c.state == "approved").distinct()
                            .order_by(relay_routes.c.name))
        return [row[0] for row in rows]


def check_publishable_key(route: Route, key: str | None) -> bool:
    expected = route.publishable_key_sha256
    if not expected or not key:
        return False
    return hmac.compare_digest(expected, publishable_key_hash(key))
