"""Configuration of the Vault / OpenBao Transit provider, from explicit values or the environment.

Kept apart from the provider so a reviewer can check in one place which settings exist,
which combinations are refused, and that secrets only ever travel as `Secret`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vault.errors import ConfigurationError
from vault.secret import Secret

__all__ = ["VaultConfig"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_MOUNT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false")


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError as exc:
        raise ConfigurationError(f"{name} must be a number") from exc


@dataclass(frozen=True)
class VaultConfig:
    """Everything the Transit provider needs, explicit so nothing is read from the
    environment behind the caller's back (hvac would otherwise fall back to
    VAULT_TOKEN or ~/.vault-token).

    Auth is either `token`, or AppRole (`role_id` plus `secret_id` or
    `secret_id_file`; the file is re-read at each login so it can be rotated).
    """

    addr: str
    token: Secret[str] | None = None
    role_id: Secret[str] | None = None
    secret_id: Secret[str] | None = None
    secret_id_file: Path | None = None
    approle_mount: str = "approle"
    namespace: str | None = None
    ca_cert: str | None = None
    skip_verify: bool = False
    mount: str = "transit"
    key_name: str = "tokenvault-kek"
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    max_retries: int = 2
    backoff_base: float = 0.05
    backoff_max: float = 1.0
    breaker_failures: int = 5
    breaker_reset: float = 10.0
    pool_size: int = 10

    def __post_init__(self) -> None:
        if not self.addr.startswith(("http://", "https://")):
            raise ConfigurationError("VAULT_ADDR must be an http(s) URL")
        if self.role_id is None and (self.secret_id is not None or self.secret_id_file is not None):
            raise ConfigurationError("VAULT_SECRET_ID needs VAULT_ROLE_ID")
        if self.role_id is not None:
            if self.secret_id is None and self.secret_id_file is None:
                raise ConfigurationError("AppRole needs VAULT_SECRET_ID or VAULT_SECRET_ID_FILE")
            if self.secret_id is not None and self.secret_id_file is not None:
                raise ConfigurationError("set only one of VAULT_SECRET_ID and VAULT_SECRET_ID_FILE")
        elif self.token is None or not self.token.expose():
            raise ConfigurationError("Vault auth missing: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID")
        if not _MOUNT.match(self.mount) or not _MOUNT.match(self.approle_mount):
            raise ConfigurationError("Vault mount paths may hold only letters, digits, '_', '-', '.' and '/'")
        if not _KEY_NAME.match(self.key_name):
            raise ConfigurationError("TOKENVAULT_VAULT_KEY may hold only letters, digits, '_', '-' and '.'")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigurationError("Vault timeouts must be positive")
        if self.max_retries < 0 or self.breaker_failures < 1 or self.breaker_reset <= 0 or self.pool_size < 1:
            raise ConfigurationError("Vault retry, breaker and pool settings out of range")

    @property
    def uses_approle(self) -> bool:
        return self.role_id is not None

    def read_secret_id(self) -> Secret[str]:
        """The AppRole secret id, from memory or freshly from its file."""
        if self.secret_id is not None:
            return self.secret_id
        if self.secret_id_file is None:
            raise ConfigurationError("AppRole secret id not configured")
        try:
            value = self.secret_id_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigurationError(f"VAULT_SECRET_ID_FILE not readable: {self.secret_id_file}") from exc
        if not value:
            raise ConfigurationError(f"VAULT_SECRET_ID_FILE is empty: {self.secret_id_file}")
        return Secret(value)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VaultConfig:
        """Read the standard Vault variables plus TOKENVAULT_VAULT_* settings.

        VAULT_ADDR, VAULT_NAMESPACE, VAULT_CACERT, VAULT_SKIP_VERIFY, VAULT_TOKEN,
        VAULT_ROLE_ID + VAULT_SECRET_ID | VAULT_SECRET_ID_FILE (AppRole wins over
        VAULT_TOKEN), TOKENVAULT_VAULT_MOUNT (transit), TOKENVAULT_VAULT_KEY
        (tokenvault-kek), TOKENVAULT_VAULT_APPROLE_MOUNT (approle),
        TOKENVAULT_VAULT_CONNECT_TIMEOUT (2 s), TOKENVAULT_VAULT_READ_TIMEOUT (5 s),
        TOKENVAULT_VAULT_RETRIES (2), TOKENVAULT_VAULT_BREAKER_FAILURES (5),
        TOKENVAULT_VAULT_BREAKER_RESET (10 s).
        """
        addr = env.get("VAULT_ADDR", "").strip()
        if not addr:
            raise ConfigurationError("VAULT_ADDR is not set")
        role_id = env.get("VAULT_ROLE_ID", "").strip()
        secret_id = env.get("VAULT_SECRET_ID", "").strip()
        secret_file = env.get("VAULT_SECRET_ID_FILE", "").strip()
        token = env.get("VAULT_TOKEN", "").strip()
        approle = bool(role_id)
        config = cls(
            addr=addr.rstrip("/"),
            token=Secret(token) if token and not approle else None,
            role_id=Secret(role_id) if approle else None,
            secret_id=Secret(secret_id) if secret_id else None,
            secret_id_file=Path(secret_file) if secret_file else None,
            approle_mount=env.get("TOKENVAULT_VAULT_APPROLE_MOUNT", "").strip() or "approle",
            namespace=env.get("VAULT_NAMESPACE", "").strip() or None,
            ca_cert=env.get("VAULT_CACERT", "").strip() or None,
            skip_verify=_flag(env, "VAULT_SKIP_VERIFY"),
            mount=env.get("TOKENVAULT_VAULT_MOUNT", "").strip().strip("/") or "transit",
            key_name=env.get("TOKENVAULT_VAULT_KEY", "").strip() or "tokenvault-kek",
            connect_timeout=_number(env, "TOKENVAULT_VAULT_CONNECT_TIMEOUT", 2.0),
            read_timeout=_number(env, "TOKENVAULT_VAULT_READ_TIMEOUT", 5.0),
            max_retries=int(_number(env, "TOKENVAULT_VAULT_RETRIES", 2)),
            breaker_failures=int(_number(env, "TOKENVAULT_VAULT_BREAKER_FAILURES", 5)),
            breaker_reset=_number(env, "TOKENVAULT_VAULT_BREAKER_RESET", 10.0),
        )
        if config.ca_cert is not None and not Path(config.ca_cert).is_file():
            raise ConfigurationError(f"VAULT_CACERT is not a file: {config.ca_cert}")
        if config.secret_id_file is not None:
            config.read_secret_id()  # fail at startup, not at the first login
        return config


# -- transport -----------------------------------------------------------------------


