"""Checkpoint signatures by a Transit ed25519 key that never leaves Vault/OpenBao.

The default with the Vault provider (`TOKENVAULT_AUDIT_SIGNING` unset or `transit`): the key
(`TOKENVAULT_AUDIT_SIGNING_KEY`, default `tokenvault-audit-checkpoints`) is created by
`tokenvault init` with the admin policy, `exportable=false`, so neither the database, nor the
host, nor this process ever holds it; anyone can verify with the public keys Transit publishes
(`GET transit/keys/:name`). Each entry names the key version that signed it
(`transit:<name>:v<N>`), so entries survive a rotation of the key.

Requests go through the provider's client (kms.vault_transit): the same AppRole login, token
renewal, retries and circuit breaker as the KEK's. Vault out of reach raises KeyServiceUnavailable,
as every other call to it does (deploy/vault/README.md: 503 key_service_unavailable); a missing or
unsafe key is a ConfigurationError. Either way the trail writes nothing and the operation fails closed.

Satisfies vault.audit.checkpoints.Signer structurally (kms/ does not import the audit wing).
"""

from __future__ import annotations

import base64
import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from kms.vault_transit import VaultTransitProvider
from vault.errors import AuditWriteFailed, ConfigurationError, KeyServiceUnavailable

__all__ = ["DEFAULT_NAME", "TransitSigner"]

DEFAULT_NAME = "tokenvault-audit-checkpoints"


class TransitSigner:
    def __init__(self, provider: VaultTransitProvider, *, name: str = DEFAULT_NAME) -> None:
        self._provider = provider
        self._name = name
        self._version: int | None = None
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return f"transit:{self._name}:v{self._version or 0}"

    def prepare(self, conn: object) -> None:
        if self._version is not None:
            return
        info = self._provider.signing_key(self._name)
        if info is None:
            # The service policy may sign but not create (the admin role's `tokenvault init` does);
            # a token that may create it (a dev server's root token) gets it made here.
            try:
                self._provider.ensure_signing_key(self._name)
                info = self._provider.signing_key(self._name)
            except KeyServiceUnavailable:
                info = None
            if info is None:
                raise ConfigurationError(f"checkpoint signing key {self._name} missing in Transit: run "
                                         "`tokenvault init` with the admin role (deploy/vault/README.md)")
        if info.get("type") != "ed25519" or info.get("exportable") is not False:
            raise ConfigurationError("the checkpoint signing key must be a non-exportable ed25519 Transit key")
        with self._lock:
            self._version = int(info["latest_version"])

    def sign(self, payload: bytes) -> str:
        if self._version is None:
            raise AuditWriteFailed("checkpoint signing key not prepared")
        return self._provider.sign(self._name, self._version, payload).hex()

    def public_keys(self, conn: object) -> dict[str, Ed25519PublicKey]:
        info = self._provider.signing_key(self._name)
        if info is None:
            return {}
        keys = info.get("keys")
        return {f"transit:{self._name}:v{version}": Ed25519PublicKey.from_public_bytes(
            base64.b64decode(item["public_key"])) for version, item in (keys or {}).items()
            if isinstance(item, dict) and item.get("public_key")}
