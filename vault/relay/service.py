"""The relay's use cases: forward a caller's request with tokens filled in (outbound), and a
browser's request with values swapped for tokens (inbound). Every call is audited.

Outbound, in order: the route (current approved version), the caller's role, method, path,
purpose and size; the templates and, for each, the token's kind against where the route lets
that kind go; then one detokenize exactly as `/v1/detokenize` does it (policy, view, subject
state; a CVV read once) with the relay's "send" event in the same transaction, all or nothing:
if any token is refused, or the events cannot be written, nothing is read, spent or sent. Then
the request goes out through the `Transport` port, and the answer comes back through response
protection. Its status and duration are audited before the caller sees it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection, Engine

from vault.access.operations import AuditedOperations
from vault.access.policy import Policy
from vault.audit.trail import ANONYMOUS, Actor, AuditTrail, Origin
from vault.errors import (
    Conflict,
    Forbidden,
    IntegrityFailure,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    UpstreamFailed,
    ValidationFailed,
    VaultError,
)
from vault.relay import templates as t
from vault.relay.addresses import check_address, check_query, join_path, path_matches
from vault.relay.protection import REDACTED, find_pans, mask_pans, possible_tokens, protect_fields
from vault.relay.routes import Route, RouteBook, check_publishable_key
from vault.relay.upstream import Answer, ClientCertificate, Exchange, Transport
from vault.secret import Secret
from vault.tokens.formats import kind_of_token
from vault.tokens.records import TokenRecord, TokenRequest
from vault.tokens.service import TokenService

__all__ = ["RelayService", "CallerRequest", "RelayAnswer"]

JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded",)


def _now() -> datetime:
    return datetime.now(UTC)


def _no_metrics(_route: str, _outcome: str, _seconds: float) -> None:
    return None


def _no_quota(_values: int) -> None:
    return None


@dataclass(frozen=True)
class CallerRequest:
    """What the caller sent, as the HTTP face read it (bounded by the route's body limit)."""

    method: str
    path: str
    query: str = ""
    content_type: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)  # lowercase names
    body: bytes = b""
    purpose: str | None = None


@dataclass(frozen=True)
class RelayAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class RelayService(AuditedOperations):
    """Outbound and inbound relay calls. Holds no request state; safe to share across threads."""

    def __init__(self, *, engine: Engine, policy: Policy, trail: AuditTrail, tokens: TokenService, book: RouteBook,
                 transport: Transport, clock: Callable[[], datetime] = _now,
                 on_call: Callable[[str, str, float], None] = _no_metrics) -> None:
        super().__init__(engine=engine, policy=policy, trail=trail, clock=clock)
        self._tokens = tokens
        self._book = book
        self._transport = transport
        self._on_call = on_call
        # The last outbound route each name resolved to. A call starts from it without a transaction of
        # its own and confirms, in the transaction that records "sending", that it is still the current
        # approved version; if not, nothing was read or sent, and the call starts over from the database.
        self._outbound: dict[str, Route] = {}

    # -- shared -----------------------------------------------------------------------------

    def route(self, name: str, direction: str) -> Route:
        """The current approved, enabled route of `direction`; NotFound otherwise (no oracle)."""
        found = self._transaction(lambda conn: self._book.current(conn, name, missing_ok=True))
        if found is None or not found.config.enabled or found.config.direction != direction:
            raise NotFound("no such route")
        return found  # type: ignore[no-any-return]

    def _detail(self, route: Route, request: CallerRequest, pattern: str, **more: Any) -> str:
        upstream = route.upstream
        extra = " ".join(f"{k}={v}" for k, v in more.items())
        return (f"route={route.name} v={route.version} host={upstream.host}:{upstream.port} "
                f"method={request.method} pattern={pattern} {extra}").strip()

    def _checked_target(self, route: Route, request: CallerRequest) -> tuple[str, str]:
        """(target, pattern): the method, path and query the route allows; ValidationFailed otherwise."""
        if request.method not in route.config.methods:
            raise ValidationFailed("method", "is not allowed on this route")
        path = join_path(request.path)
        pattern = next((p for p in route.config.paths if path_matches(path, p)), None)
        if pattern is None:
            raise ValidationFailed("path", "is outside the route's allowed paths")
        query = check_query(request.query)
        if len(request.body) > route.config.max_body_bytes:
            raise PayloadTooLarge("body exceeds the route's limit")
        return route.upstream.base_path + path + (f"?{query}" if query else ""), pattern

    def _exchange(self, route: Route, request: CallerRequest, target: str, headers: list[tuple[str, str]],
                  body: bytes) -> Exchange:
        config = route.config
        upstream = route.upstream
        out = list(headers)
        if request.content_type:
            out.append(("content-type", request.content_type))
        bearer = route.bearer
        if bearer is not None:
            out.append(("authorization", f"Bearer {bearer.expose()}"))
        client = (ClientCertificate(config.auth.client_cert_pem, Secret(config.auth.client_key_pem))
                  if config.auth.type == "mtls" and config.auth.client_cert_pem and config.auth.client_key_pem
                  else None)
        internal = config.internal

        def allow(address: str) -> None:
            check_address(address, internal=internal)

        return Exchange(method=request.method, host=upstream.host, port=upstream.port, target=target,
                        headers=out, body=body, allow=allow, ca_pem=config.ca_pem, client_certificate=client,
                        connect_timeout=config.connect_timeout, deadline_seconds=config.timeout,
                        max_response_bytes=config.max_response_bytes, reuse_key=f"{route.name}:{route.version}")

    def _send(self, actor: Actor, route: Route, request: CallerRequest, pattern: str, exchange: Exchange,
              origin: Origin) -> tuple[Answer, float]:
        started = time.perf_counter()
        try:
            answer = self._transport.send(exchange)
        except (UpstreamFailed, ValidationFailed) as error:
            seconds = time.perf_counter() - started
            self._on_call(route.name, error.code, seconds)
            self._audit_failure([self._event(actor, "relay", "error", origin, error_code=error.code,
                                             detail=self._detail(route, request, pattern, phase="upstream",
                                                                 ms=round(seconds * 1000)))])
            raise
        return answer, time.perf_counter() - started

    def _finish(self, actor: Actor, route: Route, request: CallerRequest, pattern: str, answer: Answer,
                seconds: float, origin: Origin, masked: int) -> None:
        """The upstream's status and duration, audited before the caller sees the answer."""
        event = self._event(actor, "relay", "allowed", origin, detail=self._detail(
            route, request, pattern, phase="answered", status=answer.status, ms=round(seconds * 1000),
            pans_masked=masked))
        self._transaction(lambda conn: self._trail.record(conn, [event]))
        self._on_call(route.name, str(answer.status), seconds)

    def _protect(self, route: Route, answer: Answer, origin: Origin,
                 sent: Sequence[str] = (), known: Collection[str] = ()) -> tuple[RelayAnswer, int]:
        """Configured response fields tokenized or redacted, then every PAN-like number masked.

        An upstream that echoes the request must not hand the caller what the vault put in it:
        the route's bearer secret and every substituted value (as sent and JSON-escaped) are
        redacted first; a CVV (3 or 4 digits) only where it stands alone as a number.
        """
        config = route.config
        wanted = {"content-type", *config.return_headers}
        headers = [(name.lower(), value) for name, value in answer.headers if name.lower() in wanted]
        body = _scrub(answer.body, [*sent, *([route.bearer.expose()] if route.bearer else [])])
        headers = [(name, _scrub(value.encode("latin-1", "replace"), sent).decode("latin-1"))
                   for name, value in headers]
        content_type = next((v for n, v in headers if n == "content-type"), "")
        if config.response_fields and content_type.split(";")[0].strip().lower() in JSON_TYPES:
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                document = None
            if document is not None:
                rules = [(f.path, f"{f.action}:{f.kind}") for f in config.response_fields]
                document = protect_fields(document, rules, lambda rule, value: self._protect_value(
                    route, rule, value, origin))
                body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        # latin-1 maps every byte to one character and back: digits are found in any ASCII-based
        # encoding, and the bytes around them are returned unchanged.
        text = body.decode("latin-1")
        text, masked = mask_pans(text, known)
        clean_headers = []
        for name, value in headers:
            value, count = mask_pans(value, known)
            masked += count
            clean_headers.append((name, value))
        return RelayAnswer(status=answer.status, headers=clean_headers, body=text.encode("latin-1")), masked

    def _protect_value(self, route: Route, rule: str, value: Any, origin: Origin) -> Any:
        action, kind = rule.split(":", 1)
        if action == "redact" or route.config.tokenize_role is None:
            return REDACTED
        actor = Actor(id=f"relay:{route.name}", role=route.config.tokenize_role)
        result = self._tokens.tokenize(actor, [TokenRequest(kind=kind, value=value)], origin)[0]
        return result.token if isinstance(result, TokenRecord) else REDACTED

    # -- outbound ---------------------------------------------------------------------------

    def forward(self, actor: Actor, name: str, request: CallerRequest, origin: Origin,
                spend: Callable[[int], None] = _no_quota) -> RelayAnswer:
        """Detokenize into the caller's request, send it to the route's upstream, return the protected answer.

        `spend(n)` charges the caller's detokenize quota with the n values about to be read (each
        distinct token, as `/v1/detokenize` charges each item), before anything is read; it raises
        RateLimited when the quota is spent, and nothing is read or sent.
        """
        remembered = self._outbound.get(name)
        for _attempt in range(3):  # a route read afresh can still change before "sending" commits
            try:
                return self._forward(actor, name, request, origin, spend, remembered)
            except _StaleRoute:
                self._outbound.pop(name, None)
                remembered = None
        raise self._deny(actor, "relay", origin, Conflict("the route is changing; try again"),
                         detail=f"route={name[:40]}")

    def _still_current(self, route: Route) -> Callable[[Connection], None]:
        def check(conn: Connection) -> None:
            if self._book.current_version(conn, route.name) != route.version:
                raise _StaleRoute()
        return check

    def _forward(self, actor: Actor, name: str, request: CallerRequest, origin: Origin,
                 spend: Callable[[int], None], remembered: Route | None) -> RelayAnswer:
        """One attempt; with a `remembered` route, any refusal or a newer version starts over (_StaleRoute)."""
        try:
            route = remembered or self.route(name, "outbound")
            if actor.role not in route.config.roles:
                raise NotFound("no such route")  # a role the route does not serve cannot learn it exists
        except (NotFound, IntegrityFailure) as error:
            if remembered is not None:
                raise _StaleRoute() from None
            raise self._deny(actor, "relay", origin, error, detail=f"route={name[:40]}") from None
        if remembered is None:
            self._outbound[name] = route
        pattern = "-"
        try:
            target, pattern = self._checked_target(route, request)
            purpose = request.purpose or (route.config.purposes[0] if len(route.config.purposes) == 1 else None)
            if purpose not in route.config.purposes:
                raise ValidationFailed("purpose", "is not a purpose this route serves")
            body_doc, found = self._templates(route, request)
        except VaultError as error:
            if remembered is not None:
                raise _StaleRoute() from None  # refused by a remembered route: decide on the current one
            raise self._deny(actor, "relay", origin, error, detail=self._detail(route, request, pattern)) from None

        tokens = list(dict.fromkeys(template.token for template in found))
        if tokens:
            spend(len(tokens))  # values, not requests: a body of 1,000 templates spends 1,000
        sending = self._event(actor, "relay", "allowed", origin, purpose=purpose, detail=self._detail(
            route, request, pattern, phase="sending", tokens=len(tokens)))
        check = self._still_current(route)
        if tokens:
            results = self._tokens.detokenize(actor, tokens, purpose, origin, require_all=True, also=[sending],
                                              check=check)
        else:
            def record(conn: Connection) -> None:
                check(conn)
                self._trail.record(conn, [sending])

            self._audited(actor, "relay", origin, record)
            results = []
        by_token = {item.token: item for item in results}
        values: dict[tuple[str, str], str] = {}
        try:
            for template in found:
                item = by_token[template.token]
                values[(template.token, template.field)] = t.value_field(item.kind or "", item.value,
                                                                         template.field)
            headers = [(n, t.fill_header(n, v, values)) for n, v in request.headers
                       if n in route.config.forward_headers]
            body = self._filled_body(request, body_doc, values)
        except VaultError as error:
            raise self._deny(actor, "relay", origin, error, detail=self._detail(route, request, pattern)) from None
        exchange = self._exchange(route, request, target, headers, body)
        sent = list(values.values())
        del values, body  # the plaintext lives no longer than the exchange
        answer, seconds = self._send(actor, route, request, pattern, exchange, origin)
        # Card tokens the caller itself sent (it knows them; looking them up would be an oracle) are not
        # masked when the upstream echoes them: the PAN detector flags about a third of card tokens.
        known = possible_tokens(request.body.decode("latin-1")).union(
            *(possible_tokens(value) for _, value in request.headers))
        protected, masked = self._protect(route, answer, origin, sent, known)
        del sent
        self._finish(actor, route, request, pattern, answer, seconds, origin, masked)
        return protected

    def _templates(self, route: Route, request: CallerRequest) -> tuple[Any, list[t.Template]]:
        """The parsed body and every template, each token's kind checked against where it stands."""
        mimetype = request.content_type.split(";")[0].strip().lower()
        found: list[t.Template] = []
        document: Any = None
        if mimetype in JSON_TYPES and request.body:
            document = t.parse_json(request.body)
            found += t.find_json(document)
        elif mimetype in FORM_TYPES:
            document = t.parse_form(request.body)
            found += t.find_form(document)
        elif t.MARKER in request.body.decode("latin-1").lower():
            raise ValidationFailed("body", "templates are filled in JSON and form bodies only")
        for name, value in request.headers:
            if name in route.config.forward_headers:
                found += t.find(value, "header")
            elif t.MARKER in value.lower():
                raise ValidationFailed(f"header.{name[:40]}", "is not a header this route forwards")
        for template in found:
            kind = kind_of_token(template.token)
            if kind not in route.config.substitute.get(template.location, ()):  # type: ignore[call-overload]
                raise Forbidden(f"this route does not let {kind} values into the {template.location}")
            if template.field not in t.FIELDS[kind]:
                raise ValidationFailed("template", f"{kind} tokens offer {', '.join(t.FIELDS[kind])}")
        return document, found

    @staticmethod
    def _filled_body(request: CallerRequest, document: Any, values: dict[tuple[str, str], str]) -> bytes:
        mimetype = request.content_type.split(";")[0].strip().lower()
        if mimetype in JSON_TYPES and request.body:
            return t.fill_json(document, values)
        if mimetype in FORM_TYPES:
            return t.fill_form(document, values)
        return request.body

    # -- inbound ----------------------------------------------------------------------------

    def inbound(self, name: str, publishable_key: Secret[str] | None, browser_origin: str | None,
                request: CallerRequest, origin: Origin) -> RelayAnswer:
        """Tokenize the route's fields in a browser's request, forward it, return the protected answer."""
        actor = Actor(id=f"relay:{name[:40]}", role="none")
        try:
            route = self.route(name, "inbound")
            if not check_publishable_key(route, publishable_key.expose() if publishable_key else None):
                raise Unauthenticated("invalid publishable key")
        except IntegrityFailure as error:
            raise self._deny(ANONYMOUS, "relay_inbound", origin, error, detail=f"route={name[:40]}") from None
        except (NotFound, Unauthenticated):
            raise self._deny(ANONYMOUS, "relay_inbound", origin, Unauthenticated("invalid publishable key"),
                             detail=f"route={name[:40]}") from None
        actor = Actor(id=f"relay:{route.name}", role=route.config.tokenize_role or "none")
        pattern = "-"
        try:
            if browser_origin not in route.config.allowed_origins:
                raise Forbidden("origin not allowed")
            target, pattern = self._checked_target(route, request)
            mimetype = request.content_type.split(";")[0].strip().lower()
            if mimetype not in JSON_TYPES:
                raise ValidationFailed("body", "must be application/json")
            document = t.parse_json(request.body)
            picked: list[tuple[list[str], str, Any]] = []
            for spec in route.config.inbound_fields:
                steps = spec.path.split(".")
                value = _get(document, steps)
                if value is not None:
                    picked.append((steps, spec.kind, value))
                    document = _set(document, steps, None)
            if find_pans(json.dumps(document)):
                raise ValidationFailed("body", "carries a card number outside the fields this route tokenizes")
        except VaultError as error:
            raise self._deny(actor, "relay_inbound", origin, error,
                             detail=self._detail(route, request, pattern)) from None
        results = self._tokens.tokenize(actor, [TokenRequest(kind=kind, value=value) for _, kind, value in picked],
                                        origin) if picked else []
        for (steps, _kind, _value), result in zip(picked, results, strict=True):
            if not isinstance(result, TokenRecord):
                refused = ValidationFailed(".".join(steps), getattr(result, "rule", "could not be tokenized"))
                raise self._deny(actor, "relay_inbound", origin, refused,
                                 detail=self._detail(route, request, pattern))
            document = _set(document, steps, result.token)
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(n, v) for n, v in request.headers if n in route.config.forward_headers]
        for n, v in headers:
            if find_pans(v) or any(c in v for c in "\r\n\x00"):
                raise self._deny(actor, "relay_inbound", origin, ValidationFailed(f"header.{n}", "is not allowed"))
        sending = self._event(actor, "relay_inbound", "allowed", origin, detail=self._detail(
            route, request, pattern, phase="sending", tokens=len(results)))
        self._audited(actor, "relay_inbound", origin, lambda conn: self._trail.record(conn, [sending]))
        exchange = self._exchange(route, request, target, headers, body)
        answer, seconds = self._send(actor, route, request, pattern, exchange, origin)
        # The tokens made in this call may come back in the merchant's answer: not masked as PANs.
        protected, masked = self._protect(route, answer, origin, known={r.token for r in results
                                                                       if isinstance(r, TokenRecord)})
        self._finish(actor, route, request, pattern, answer, seconds, origin, masked)
        return protected

    def allowed_origin(self, name: str, browser_origin: str | None) -> Route | None:
        """For CORS preflight: the inbound route if `browser_origin` may call it (nothing audited)."""
        try:
            route = self.route(name, "inbound")
        except (NotFound, IntegrityFailure):  # refused without a word; the call itself is denied and audited
            return None
        return route if browser_origin in route.config.allowed_origins else None

    def in_transaction(self, work: Callable[[Connection], Any]) -> Any:
        return self._transaction(work)


class _StaleRoute(Exception):
    """A remembered route is no longer the current version, or refused the call: nothing was read or sent."""


def _scrub(body: bytes, values: Sequence[str]) -> bytes:
    for value in sorted(set(values), key=len, reverse=True):
        if len(value) >= 5:
            for form in {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}:
                body = body.replace(form.encode("utf-8", "replace"), REDACTED.encode())
        elif value.isdigit() and len(value) >= 3:
            body = re.sub(rb"(?<![0-9])" + value.encode() + rb"(?![0-9])", REDACTED.encode(), body)
    return body


def _get(document: Any, steps: list[str]) -> Any:
    for step in steps:
        if not isinstance(document, dict) or step not in document:
            return None
        document = document[step]
    return document


def _set(document: Any, steps: list[str], value: Any) -> Any:
    if not steps:
        return value
    if not isinstance(document, dict) or steps[0] not in document:
        return document
    return {**document, steps[0]: _set(document[steps[0]], steps[1:], value)}
