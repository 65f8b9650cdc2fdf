"""Flask app factory: wires components, authentication, errors and request logging.

Each server worker builds its own app (no preload), so no key material is shared
between processes by accident.
"""

from __future__ import annotations

import atexit
import multiprocessing.util
import os
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from api.http import audit, auth_flood, enrolment, errors, keys, login, metrics, operators, privacy, ratelimits, relay
from api.http.auth import bearer_credentials
from api.http.json_codec import OrjsonProvider
from api.http.logs import configure, get_logger
from api.http.openapi import document
from api.http.proxies import TrustedProxies
from api.http.tokens import blueprint, components, origin
from api.settings import Settings
from api.wiring import Components, build
from vault.audit.trail import AuditEvent
from vault.clear_text import contains_pan
from vault.errors import Unauthenticated, VaultError
from vault.secret import Secret

__all__ = ["create_app"]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_WITHOUT_CREDENTIALS = frozenset((login.LOGIN_PATH, *enrolment.PATHS))
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
    # granian names itself unless the app sends a Server field: an empty one discloses no software or version.
    "Server": "",
}


def create_app(settings: Settings | None = None, *, parts: Components | None = None) -> Flask:
    settings = settings or (parts.settings if parts else Settings.from_env())
    configure(settings.log_level)
    log = get_logger("tokenvault.http")
    parts = parts or build(settings)
    _record_lifecycle(parts, "service_start")
    _warn_human_role_clients(parts)

    app = Flask("tokenvault")
    app.json = OrjsonProvider(app)  # orjson where it writes what json would (api/http/json_codec.py)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tokenvault"] = parts
    if settings.proxy_hops:  # forwarded headers only from the listed proxies (TOKENVAULT_FORWARDED_ALLOW_IPS)
        app.wsgi_app = TrustedProxies(app.wsgi_app, hops=settings.proxy_hops,  # type: ignore[method-assign]
                                      allowed=settings.forwarded_allow)
    errors.register(app)
    openapi = document()
    failures = auth_flood.FailedAuthentications(parts.access.auth_failure_rate_limit, parts.access.redis_url)

    @app.before_request
    def _start() -> tuple[Response, int] | None:
        g.started = time.perf_counter()
        supplied = request.headers.get("X-Request-ID", "")
        # Echoed in the response and written to the trail: a card number in it is replaced, never kept.
        usable = _REQUEST_ID.match(supplied) and not contains_pan(supplied)
        g.request_id = supplied if usable else secrets.token_hex(16)
        # The inbound relay authenticates its own way (a publishable key good for nothing else).
        if (request.path.startswith("/v1/") and request.path not in _WITHOUT_CREDENTIALS
                and not request.path.startswith(relay.INBOUND_PREFIX)):
            if (too_many := auth_flood.refused(failures)) is not None:
                return too_many
            try:
                g.actor = components().authenticator.authenticate(bearer_credentials(), origin())
            except Unauthenticated:
                auth_flood.failed(failures)
                raise
            components().tokens.maybe_purge()
        return None

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers.update(_SECURITY_HEADERS)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        rule = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.REQUESTS.labels(rule, request.method, str(response.status_code)).inc()
        metrics.LATENCY.labels(rule, request.method).observe(elapsed)
        log.info("request", method=request.method, route=rule, status=response.status_code,
                 ms=round(elapsed * 1000, 2),
                 request_id=g.get("request_id"), actor=getattr(g.get("actor"), "id", None))
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            components().tokens.check()
        except VaultError as error:
            return jsonify({"error": errors.error_body(error)}), 503
        return jsonify({"status": "ready"}), 200

    metrics_token = settings.env.get("TOKENVAULT_METRICS_TOKEN")
    metrics_public = settings.env.get("TOKENVAULT_METRICS_PUBLIC") == "1"

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        if not metrics.authorised(request.headers.get("Authorization", ""),
                                  Secret(metrics_token) if metrics_token else None, public=metrics_public):
            raise Unauthenticated("metrics need the metrics token")
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        return jsonify(openapi)

    app.register_blueprint(blueprint)
    app.register_blueprint(audit.blueprint)
    app.register_blueprint(privacy.blueprint)
    app.register_blueprint(keys.blueprint)
    app.register_blueprint(login.blueprint)
    app.register_blueprint(enrolment.blueprint)
    app.register_blueprint(operators.blueprint)
    app.register_blueprint(relay.blueprint)
    ratelimits.init_app(app, parts)
    return app


def _record_lifecycle(parts: Components, action: str) -> None:
    """Start and stop of the service (and so of its logging) are audit events (PCI DSS 10.2.1.6)."""
    event = AuditEvent(at=datetime.now(UTC), actor="system", role="system", action=action, outcome="allowed",
                       detail=f"pid={os.getpid()} policy={parts.policy.source} kms={parts.provider.name}")
    try:
        with parts.engine.begin() as conn:
            parts.trail.record(conn, [event])
    except (VaultError, SQLAlchemyError) as error:
        # A worker that boots during a key-service or database outage must still come up: it
        # answers 503 (fail closed per request) and recovers by itself. Refusing to boot would
        # make the server give up on the whole service.
        get_logger("tokenvault.lifecycle").error("lifecycle event not audited", action=action,
                                                 error=getattr(error, "code", type(error).__name__))
    if action == "service_stop":
        parts.trail.close()  # graceful stop: anchor this worker's chains, the stop event included


def _warn_human_role_clients(parts: Components) -> None:
    """API keys of human roles are refused (issue 15): say at start which clients that is and what to do."""
    try:
        refused = parts.clients.human_role_clients()
    except (VaultError, SQLAlchemyError):
        return  # the database is down: every request fails closed anyway
    for row in refused:
        get_logger("tokenvault.lifecycle").warning(
            "api key refused: client carries a human role", client_id=row["id"], role=row["role"],
            action="revoke it (`tokenvault clients revoke`) and give the person an operator account")


def wsgi_app() -> Any:
    """Entry point for the server (`api.http.app:wsgi_app`, a factory): one app per worker, stop recorded at exit.

    granian's workers are multiprocessing children, which leave through `os._exit` and skip `atexit`;
    multiprocessing runs its own finalizers on the way out. The stop is registered with both, and runs once."""
    app = create_app()
    parts = app.extensions["tokenvault"]
    parts.epochs.start()  # acknowledges key epochs: key jobs need not wait the whole cache window
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            parts.watch.stop()
            parts.epochs.stop()
            _record_lifecycle(parts, "service_stop")

    if parts.settings.integrity_watch != "off":
        parts.watch.start()  # this worker verifies the trail every few seconds (vault.audit.watch)

    atexit.register(stop)
    multiprocessing.util.Finalize(None, stop, exitpriority=10)
    return app
