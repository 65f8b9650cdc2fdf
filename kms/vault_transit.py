"""Key provider backed by HashiCorp Vault / OpenBao Transit: the KEK never leaves Vault.

Domain keys are sent to Transit's encrypt/decrypt/rewrap endpoints in batches and
come back as `vault:v<N>:<base64>` ciphertexts. Everything about reaching Vault is
fail-closed: any failure to reach or use it raises KeyServiceUnavailable, whose
message names the operation and HTTP status only, never a key, token or secret id.

Resilience, kept small and explicit:
- one pooled requests.Session with connect/read timeouts;
- retries with exponential backoff and full jitter, only for idempotent calls
  (encrypt/decrypt/rewrap/reads) and only on 412/429/502/503 or connection errors;
  never for create/rotate/config, whose effects must not happen twice;
- a circuit breaker (kms.circuit) so a dead Vault costs milliseconds, not timeouts;
- token renewal before expiry and, with AppRole, re-login after a 403.
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from requests.adapters import HTTPAdapter

from kms.circuit import CircuitBreaker
from kms.transit_wire import (
    BATCH_LIMIT,
    _b64,
    _batch_results,
    _chunks,
    _created_at,
    _data,
    _int,
    _item_ok,
    _well_formed,
)
from kms.vault_config import VaultConfig
from kms.vault_session import REASONS, CountingSession, Denied, Rejected, Unreachable
from vault.errors import ConfigurationError, KeyServiceUnavailable
from vault.keys.provider import KEY_BYTES, KekInfo
from vault.secret import Secret

__all__ = ["VaultConfig", "VaultTransitProvider", "BATCH_LIMIT", "KEY_TYPE"]

T = TypeVar("T")

KEY_TYPE = "aes256-gcm96"
# OpenBao refuses JSON bodies with too many strings (500 items failed, 400 worked).
_RETRY_STATUS = frozenset({412, 429, 502, 503})
_HEALTHY_STATUS = frozenset({200, 429, 473})
_JITTER = random.SystemRandom()


# -- configuration ------------------------------------------------------------------


class VaultTransitProvider:
    """KeyProvider whose KEK is a Vault/OpenBao Transit key (aes256-gcm96, not exportable)."""

    name = "vault"

    def __init__(
        self,
        *,
        config: VaultConfig,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._breaker = CircuitBreaker(
            failure_threshold=config.breaker_failures, reset_timeout=config.breaker_reset, clock=clock
        )
        session = CountingSession()
        # Explicit config only: no proxies, CA bundles or netrc picked up from the environment.
        session.trust_env = False
        verify: bool | str = False if config.skip_verify else (config.ca_cert or True)
        session.verify = verify
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=config.pool_size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self._client = hvac.Client(
            url=config.addr,
            token=config.token.expose() if config.token is not None else "",
            verify=verify,
            timeout=(config.connect_timeout, config.read_timeout),
            namespace=config.namespace,
            session=session,
        )
        self._auth_lock = threading.Lock()
        self._authenticated = False
        self._generation = 0
        self._renewable = False
        self._renew_at: float | None = None

    # -- plumbing ---------------------------------------------------------------------

    @property
    def calls(self) -> int:
        return self._session.round_trips

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def key_name(self) -> str:
        return self._config.key_name

    def close(self) -> None:
        """Release pooled connections."""
        self._session.close()

    def _backoff(self, attempt: int) -> float:
        """Full jitter: spreads retries of many workers so they do not stampede Vault."""
        ceiling = min(self._config.backoff_max, self._config.backoff_base * (2**attempt))
        return _JITTER.uniform(0.0, ceiling)

    def _attempt(self, what: str, fn: Callable[[], T], *, idempotent: bool) -> T:
        """Run one Vault request, retrying only idempotent ones on transient failures."""
        attempts = 1 + (self._config.max_retries if idempotent else 0)
        for attempt in range(attempts):
            retryable = False
            try:
                return fn()
            except requests.exceptions.SSLError:
                failure = Unreachable(f"vault {what}: TLS verification failed")
            except requests.ConnectionError:  # includes ConnectTimeout
                failure = Unreachable(f"vault {what}: cannot connect")
                retryable = True
            except requests.Timeout:
                failure = Unreachable(f"vault {what}: timed out")
            except requests.RequestException:
                failure = Unreachable(f"vault {what}: HTTP transport error")
            except hvac.exceptions.ParamValidationError:
                raise Rejected(f"vault {what}: invalid request", None) from None
            except hvac.exceptions.VaultError as exc:
                status = self._session.last_status()
                if status in (401, 403) or isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
                    raise Denied(f"vault {what}: permission denied") from None
                if status is None or status in _RETRY_STATUS or status >= 500:
                    errors = " ".join(str(e) for e in (exc.errors or []))
                    reason = "sealed" if "sealed" in errors else REASONS.get(status or 0, "server error")
                    failure = Unreachable(f"vault {what}: HTTP {status} {reason}")
                    retryable = status in _RETRY_STATUS
                else:
                    raise Rejected(f"vault {what}: HTTP {status}", status) from None
            if not retryable or attempt == attempts - 1:
                raise failure
            self._sleep(self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, what: str, fn: Callable[[], T], *, idempotent: bool) -> T:
        """One logical operation: breaker, auth, retries, and one re-login after a 403."""
        if not self._breaker.allow():
            raise KeyServiceUnavailable(
                f"vault {what}: circuit open after repeated failures, retry in {self._breaker.retry_after():.1f}s"
            )
        try:
            result = self._authenticated_call(what, fn, idempotent=idempotent)
        except Unreachable as exc:
            self._breaker.record_failure()
            raise KeyServiceUnavailable(str(exc)) from None
        except (Denied, Rejected) as exc:
            self._breaker.record_success()
            raise KeyServiceUnavailable(str(exc)) from None
        except Exception:
            self._breaker.record_success()  # Vault answered; the error is about the answer
            raise
        self._breaker.record_success()
        return result

    def _authenticated_call(self, what: str, fn: Callable[[], T], *, idempotent: bool) -> T:
        generation = self._ensure_token()
        try:
            return self._attempt(what, fn, idempotent=idempotent)
        except Denied:
            if not self._config.uses_approle:
                raise
        # The token may have been revoked or expired early: log in again and retry once.
        # A 403 means Vault did not act, so even a non-idempotent call is safe to repeat.
        self._relogin(generation)
        return self._attempt(what, fn, idempotent=idempotent)

    # -- auth -------------------------------------------------------------------------

    def _set_lease(self, ttl: object, renewable: object) -> None:
        self._renewable = renewable is True
        if isinstance(ttl, int) and ttl > 0:
            # Renew at two thirds of the lease, leaving time for a slow Vault.
            self._renew_at = self._clock() + ttl * 2 / 3
        else:
            self._renew_at = None  # no expiry (e.g. a root or periodic-less token)
        self._authenticated = True
        self._generation += 1

    def _login_locked(self) -> None:
        role_id = self._config.role_id
        if role_id is None:
            raise Denied("vault: no AppRole configured")
        secret_id = self._config.read_secret_id()
        try:
            response = self._attempt(
                "AppRole login",
                lambda: self._client.auth.approle.login(
                    role_id=role_id.expose(),
                    secret_id=secret_id.expose(),
                    mount_point=self._config.approle_mount,
                    use_token=True,
                ),
                idempotent=False,
            )
        except Rejected as exc:
            # Vault answers 400 for a wrong role or secret id: our credentials are refused.
            raise Denied(f"vault AppRole login refused (HTTP {exc.status})") from None
        auth = response.get("auth") if isinstance(response, dict) else None
        if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
            raise Rejected("vault AppRole login: unexpected response", None)
        self._set_lease(auth.get("lease_duration"), auth.get("renewable"))

    def _lookup_locked(self) -> None:
        """Learn the static token's TTL so it can be renewed in time."""
        try:
            response = self._attempt("token lookup", self._client.auth.token.lookup_self, idempotent=True)
        except (Denied, Rejected):
            # A token without the default policy cannot look itself up; use it as is.
            self._set_lease(0, False)
            return
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            self._set_lease(0, False)
            return
        self._set_lease(data.get("ttl"), data.get("renewable"))

    def _renew_locked(self) -> bool:
        try:
            response = self._attempt("token renew", self._client.auth.token.renew_self, idempotent=False)
        except (Denied, Rejected):
            return False
        auth = response.get("auth") if isinstance(response, dict) else None
        if not isinstance(auth, dict):
            return False
        ttl = auth.get("lease_duration")
        self._set_lease(ttl, auth.get("renewable"))
        # At the max TTL Vault renews for less and less: treat a short lease as expiring.
        return isinstance(ttl, int) and ttl > 2 * self._config.read_timeout

    def _ensure_token(self) -> int:
        """Log in, look up, renew or re-login as due; returns the token generation in use."""
        with self._auth_lock:
            if not self._authenticated:
                if self._config.uses_approle:
                    self._login_locked()
                else:
                    self._lookup_locked()
            elif self._renew_at is not None and self._clock() >= self._renew_at:
                renewed = self._renewable and self._renew_locked()
                if not renewed and self._config.uses_approle:
                    self._login_locked()
            return self._generation

    def _relogin(self, stale_generation: int) -> None:
        with self._auth_lock:
            if self._generation == stale_generation:  # nobody else has logged in meanwhile
                self._login_locked()

    # -- Transit helpers ------------------------------------------------------------------

    @property
    def _transit(self) -> Any:
        return self._client.secrets.transit

    def _read_key(self, what: str) -> dict[str, Any] | None:
        """The key's metadata, or None if it does not exist."""

        def read() -> object:
            try:
                return self._transit.read_key(name=self._config.key_name, mount_point=self._config.mount)
            except hvac.exceptions.InvalidPath:
                return None

        response = self._call(what, read, idempotent=True)
        return None if response is None else _data(response, what)

    def _batch(
        self, what: str, send: Callable[[list[dict[str, str]]], object], batch: list[dict[str, str]]
    ) -> list[dict[str, Any]]:
        """Send one chunk; a 400 that still carries batch_results is a per-item answer."""

        def request() -> object:
            try:
                return send(batch)
            except hvac.exceptions.InvalidRequest as exc:
                body = exc.json
                if isinstance(body, dict) and isinstance(body.get("data"), dict) and "batch_results" in body["data"]:
                    return body
                raise

        return _batch_results(self._call(what, request, idempotent=True), len(batch), what)

    # -- KeyProvider -------------------------------------------------------------------

    def initialise(self) -> bool:
        """Create the Transit mount and KEK if missing; refuse an unsafe existing key.

        Reads the key first so the service token (read-only on key metadata) can run
        this at every start; only a missing key needs the admin policy.
        """
        key = self._read_key("read key")
        created = False
        if key is None:
            self._ensure_mount()
            self._call(
                "create key",
                lambda: self._transit.create_key(
                    name=self._config.key_name,
                    key_type=KEY_TYPE,
                    exportable=False,
                    allow_plaintext_backup=False,
                    mount_point=self._config.mount,
                ),
                idempotent=False,
            )
            created = True
            key = self._read_key("read key")
            if key is None:
                raise KeyServiceUnavailable("vault create key: key still missing after creation")
        self._validate(key)
        if key.get("deletion_allowed") is not False:
            # Unlike exportability, deletion can be switched off again: do so.
            self._call(
                "configure key",
                lambda: self._transit.update_key_configuration(
                    name=self._config.key_name, deletion_allowed=False, mount_point=self._config.mount
                ),
                idempotent=False,
            )
        return created

    def _validate(self, key: Mapping[str, Any]) -> None:
        name = self._config.key_name
        if key.get("type") != KEY_TYPE:
            raise ConfigurationError(f"transit key {name} must be of type {KEY_TYPE}")
        if key.get("exportable") is not False:
            raise ConfigurationError(f"transit key {name} is exportable: its KEK could leave Vault")
        if key.get("allow_plaintext_backup") is not False:
            raise ConfigurationError(f"transit key {name} allows plaintext backup: its KEK could leave Vault")
        if key.get("derived") is True or key.get("convergent_encryption") is True:
            raise ConfigurationError(f"transit key {name} must not be derived or convergent")

    def _ensure_mount(self) -> None:
        mount = self._config.mount

        def read_mount() -> object:
            try:
                return self._client.adapter.get(f"/v1/sys/mounts/{mount}")
            except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath):
                return None  # "No secret engine mount at ..."

        def mount_type(response: object) -> object:
            if not isinstance(response, dict):
                return None
            data = response.get("data")
            return (data if isinstance(data, dict) else response).get("type")

        current = self._call("read mount", read_mount, idempotent=True)
        if current is None:

            def enable() -> object:
                try:
                    return self._client.sys.enable_secrets_engine(backend_type="transit", path=mount)
                except hvac.exceptions.InvalidRequest:
                    return None  # "path is already in use": another process won the race

            self._call("enable transit", enable, idempotent=False)
            current = self._call("read mount", read_mount, idempotent=True)
        if mount_type(current) != "transit":
            raise ConfigurationError(f"Vault mount {mount}/ is not a transit secrets engine")

    def generate(self) -> tuple[Secret[bytes], str]:
        """Random key from the local CSPRNG, wrapped by one encrypt call.

        datakey/plaintext would cost the same round trip but need another capability.
        """
        key = Secret(secrets.token_bytes(KEY_BYTES))
        return key, self.wrap([key])[0]

    def wrap(self, keys: Sequence[Secret[bytes]]) -> list[str]:
        out: list[str] = []
        for chunk in _chunks(keys):
            batch = [{"plaintext": _b64(key.expose())} for key in chunk]
            results = self._batch(
                "encrypt",
                lambda b: self._transit.encrypt_data(
                    name=self._config.key_name, batch_input=b, mount_point=self._config.mount
                ),
                batch,
            )
            for item in results:
                ciphertext = _item_ok(item, "ciphertext")
                if ciphertext is None or not _well_formed(ciphertext):
                    raise KeyServiceUnavailable("vault encrypt: a key could not be wrapped")
                out.append(ciphertext)
        return out

    def unwrap(self, wrapped: Sequence[str]) -> list[Secret[bytes] | None]:
        out: list[Secret[bytes] | None] = [None] * len(wrapped)
        positions = [i for i, item in enumerate(wrapped) if _well_formed(item)]
        for chunk in _chunks(positions):
            batch = [{"ciphertext": wrapped[i]} for i in chunk]
            results = self._batch(
                "decrypt",
                lambda b: self._transit.decrypt_data(
                    name=self._config.key_name, batch_input=b, mount_point=self._config.mount
                ),
                batch,
            )
            for i, item in zip(chunk, results, strict=True):
                plaintext = _item_ok(item, "plaintext")
                if plaintext is None:
                    continue
                try:
                    out[i] = Secret(base64.b64decode(plaintext, validate=True))
                except (binascii.Error, ValueError):
                    out[i] = None
        return out

    def rewrap(self, wrapped: Sequence[str]) -> list[str | None]:
        """Transit rewrap: Vault re-encrypts under the latest version, no plaintext leaves it."""
        out: list[str | None] = [None] * len(wrapped)
        positions = [i for i, item in enumerate(wrapped) if _well_formed(item)]
        for chunk in _chunks(positions):
            batch = [{"ciphertext": wrapped[i]} for i in chunk]
            results = self._batch(
                "rewrap",
                lambda b: self._transit.rewrap_data(
                    name=self._config.key_name, ciphertext=None, batch_input=b, mount_point=self._config.mount
                ),
                batch,
            )
            for i, item in zip(chunk, results, strict=True):
                ciphertext = _item_ok(item, "ciphertext")
                out[i] = ciphertext if ciphertext is not None and _well_formed(ciphertext) else None
        return out

    # -- checkpoint signing key (an ed25519 Transit key beside the KEK) ------------------

    def signing_key(self, name: str) -> dict[str, Any] | None:
        """The signing key's metadata (versions and public keys), or None if it does not exist."""

        def read() -> object:
            try:
                return self._transit.read_key(name=name, mount_point=self._config.mount)
            except hvac.exceptions.InvalidPath:
                return None

        response = self._call("read signing key", read, idempotent=True)
        return None if response is None else _data(response, "read signing key")

    def ensure_signing_key(self, name: str) -> bool:
        """Create the audit checkpoint signing key if missing (admin policy); refuse an unsafe one.

        True if it was created. Only `tokenvault init` calls this: the service policy may read and
        sign with the key but not create it.
        """
        key = self.signing_key(name)
        created = False
        if key is None:
            self._call("create signing key", lambda: self._transit.create_key(
                name=name, key_type="ed25519", exportable=False, allow_plaintext_backup=False,
                mount_point=self._config.mount), idempotent=False)
            created = True
            key = self.signing_key(name)
            if key is None:
                raise KeyServiceUnavailable("vault create signing key: key still missing after creation")
        if key.get("type") != "ed25519":
            raise ConfigurationError(f"transit key {name} must be of type ed25519 to sign audit checkpoints")
        if key.get("exportable") is not False or key.get("allow_plaintext_backup") is not False:
            raise ConfigurationError(f"transit key {name} could leave Vault (exportable or plaintext backup)")
        return created

    def sign(self, name: str, version: int, payload: bytes) -> bytes:
        """An ed25519 signature by version `version` of Transit key `name` (the key never leaves Vault)."""
        response = self._call("sign", lambda: self._transit.sign_data(
            name=name, hash_input=_b64(payload), key_version=version, mount_point=self._config.mount),
            idempotent=True)  # a signature has no side effect: a retry is harmless
        signature = _data(response, "sign").get("signature")
        if not isinstance(signature, str) or signature.count(":") != 2:
            raise KeyServiceUnavailable("vault sign: unexpected response")
        try:
            return base64.b64decode(signature.split(":", 2)[2], validate=True)
        except (binascii.Error, ValueError):
            raise KeyServiceUnavailable("vault sign: unexpected response") from None

    def rotate(self) -> int:
        """New KEK version. Never retried: a retry after a lost reply would rotate twice."""
        response = self._call(
            "rotate key",
            lambda: self._transit.rotate_key(name=self._config.key_name, mount_point=self._config.mount),
            idempotent=False,
        )
        if isinstance(response, dict) and isinstance(response.get("data"), dict):
            version = response["data"].get("latest_version")
            if isinstance(version, int):
                return version
        # Older servers answer 204 without the key: read it.
        return self.info().latest_version

    def info(self) -> KekInfo:
        key = self._read_key("read key")
        if key is None:
            raise KeyServiceUnavailable(f"vault transit key {self._config.key_name} missing: run `tokenvault init`")
        versions: dict[int, datetime] = {}
        raw = key.get("keys")
        if isinstance(raw, dict):
            for text_version, created in raw.items():
                when = _created_at(created)
                if str(text_version).isdigit() and when is not None:
                    versions[int(text_version)] = when
        return KekInfo(
            provider=self.name,
            key_name=self._config.key_name,
            latest_version=_int(key, "latest_version", "read key"),
            min_decryption_version=_int(key, "min_decryption_version", "read key"),
            versions=versions,
        )

    def set_min_decryption_version(self, version: int) -> None:
        if version < 1:
            raise ConfigurationError("minimum decryption version must be between 1 and the latest version")

        def configure() -> object:
            try:
                return self._transit.update_key_configuration(
                    name=self._config.key_name, min_decryption_version=version, mount_point=self._config.mount
                )
            except hvac.exceptions.InvalidRequest:
                return False  # Vault: "cannot set min decryption version of N, latest key version is M"

        if self._call("configure key", configure, idempotent=False) is False:
            raise ConfigurationError("minimum decryption version must be between 1 and the latest version")

    def destroy_versions_below(self, version: int) -> None:
        """Raise min decryption and encryption versions (separate calls: hvac refuses some pairs), then trim.

        `trim` deletes the versions below `min_available_version` from the keyring for good;
        Transit allows it only up to the lesser of both minimums. Needs the admin token's
        `transit/keys/<name>/trim` and `config` capabilities.
        """
        info = self.info()
        if not 1 <= version <= info.latest_version:
            raise ConfigurationError("versions can be destroyed only below the latest version")
        if info.min_decryption_version < version:
            self.set_min_decryption_version(version)
        name, mount = self._config.key_name, self._config.mount
        self._call("configure key", lambda: self._transit.update_key_configuration(
            name=name, min_encryption_version=version, mount_point=mount), idempotent=True)
        self._call("trim key", lambda: self._transit.trim_key(name=name, min_version=version, mount_point=mount),
                   idempotent=True)

    def check(self) -> None:
        """Raise KeyServiceUnavailable unless Vault is unsealed and our key is readable."""

        def health() -> object:
            self._client.sys.read_health_status(method="GET", standby_ok=True)
            status = self._session.last_status()
            if status not in _HEALTHY_STATUS:
                raise Unreachable(f"vault health: HTTP {status} {REASONS.get(status or 0, 'unhealthy')}")
            return status

        self._call("health", health, idempotent=True)
        if self._read_key("read key") is None:
            raise KeyServiceUnavailable(f"vault transit key {self._config.key_name} missing: run `tokenvault init`")
