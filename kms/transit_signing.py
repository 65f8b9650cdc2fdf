"""Checkpoint signatures by a Transit ed25519 key that never leaves Vault/OpenBao.

With the Vault provider the checkpoint log can be signed by Transit itself
(`TOKENVAULT_AUDIT_SIGNING=transit`): the key is created `exportable=false`, so neither the
database, nor the host, nor this process ever holds it; anyone can verify with the public
keys Transit publishes (`GET transit/keys/:name`). Each entry names the key version that
signed it (`transit:<name>:v<N>`), so entries survive a rotation of the key.

Satisfies vault.audit.checkpoints.Signer structurally (kms/ does not import the audit wing).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import hvac
import hvac.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vault.errors import AuditWriteFailed, ConfigurationError

__all__ = ["TransitSigner"]


class TransitSigner:
    def __init__(self, client: hvac.Client, *, mount: str = "transit",
                 name: str = "tokenvault-audit-checkpoints") -> None:
        self._client = client
        self._mount = mount
        self._name = name
        self._version: int | None = None
        self._lock = threading.Lock()

    @property
    def key_id(self) -> str:
        return f"transit:{self._name}:v{self._version or 0}"

    def _read(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = self._client.secrets.transit.read_key(name=self._name,
                                                                          mount_point=self._mount)["data"]
        except hvac.exceptions.InvalidPath:
            return None
        return data

    def prepare(self, conn: object) -> None:
        if self._version is not None:
            return
        try:
            info = self._read()
            if info is None:
                self._client.adapter.post(f"/v1/{self._mount}/keys/{self._name}",
                                          json={"type": "ed25519", "exportable": False})
                info = self._read()
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise AuditWriteFailed("checkpoint signing key unavailable") from exc
        if info is None or info.get("type") != "ed25519" or info.get("exportable"):
            raise ConfigurationError("the checkpoint signing key must be a non-exportable ed25519 Transit key")
        with self._lock:
            self._version = int(info["latest_version"])

    def sign(self, payload: bytes) -> str:
        if self._version is None:
            raise AuditWriteFailed("checkpoint signing key not prepared")
        try:
            answer = self._client.adapter.post(
                f"/v1/{self._mount}/sign/{self._name}",
                json={"input": base64.b64encode(payload).decode(), "key_version": self._version})
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise AuditWriteFailed("checkpoint signing failed") from exc
        signature = str(answer["data"]["signature"]).split(":", 2)[2]
        return base64.b64decode(signature).hex()

    def public_keys(self, conn: object) -> dict[str, Ed25519PublicKey]:
        try:
            info = self._read()
        except (hvac.exceptions.VaultError, OSError) as exc:
            raise AuditWriteFailed("checkpoint signing key unavailable") from exc
        if info is None:
            return {}
        return {f"transit:{self._name}:v{version}": Ed25519PublicKey.from_public_bytes(
            base64.b64decode(item["public_key"])) for version, item in info.get("keys", {}).items()
            if isinstance(item, dict) and item.get("public_key")}
