"""Settings from the environment, read once at start and validated (fail closed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from vault.errors import ConfigurationError

__all__ = ["Settings"]


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float | None = None) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number") from None
    if low is not None and not value >= low:  # `not >=`: NaN fails too
        raise ConfigurationError(f"{name} must be at least {low:g}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).lower()
    if raw not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}")
    return raw


def _networks(env: Mapping[str, str], name: str) -> tuple[IPv4Network | IPv6Network, ...] | None:
    """Comma-separated addresses or networks; unset or `*` is None (every peer)."""
    raw = (env.get(name) or "").strip()
    if not raw or raw == "*":
        return None
    try:
        return tuple(ip_network(item.strip(), strict=False) for item in raw.split(",") if item.strip())
    except ValueError:
        raise ConfigurationError(f"{name} must list IP addresses or networks, comma-separated") from None


# Settings of the gunicorn era that granian has no use for: refused at start rather than silently ignored.
RETIRED = {
    "TOKENVAULT_WORKER_CLASS": "the server is granian (ASGI front, TOKENVAULT_THREADS threads per worker) since "
                               "issue 18; there is no worker class to choose: remove it",
}


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    kms: str
    bind: str
    workers: int
    policy_path: Path | None
    key_cache_seconds: float
    auth_cache_seconds: float
    max_body_bytes: int
    bodies_per_address: int
    min_body_bytes_per_second: float
    body_grace_seconds: float
    proxy_hops: int
    forwarded_allow: tuple[IPv4Network | IPv6Network, ...] | None
    request_seconds: float
    log_level: str
    checkpoint_dir: Path
    checkpoint_seconds: float
    # The integrity watch (vault.audit.watch): lockdown (default), alert (log and audit only) or off.
    integrity_watch: str
    integrity_watch_seconds: float
    env: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        data_dir = Path(env.get("TOKENVAULT_DATA_DIR") or "var").resolve()
        kms = env.get("TOKENVAULT_KMS") or "local"
        if kms not in ("local", "vault"):
            raise ConfigurationError("TOKENVAULT_KMS must be `local` or `vault`")
        policy = env.get("TOKENVAULT_POLICY")
        forwarded_allow = _networks(env, "TOKENVAULT_FORWARDED_ALLOW_IPS")
        return cls(
            data_dir=data_dir,
            database_url=env.get("TOKENVAULT_DATABASE_URL") or f"sqlite:///{data_dir / 'tokenvault.db'}",
            kms=kms,
            bind=env.get("TOKENVAULT_BIND") or "127.0.0.1:8080",
            workers=_int(env, "TOKENVAULT_WORKERS", 2, 1, 64),
            policy_path=Path(policy) if policy else None,
            key_cache_seconds=_float(env, "TOKENVAULT_KEY_CACHE_SECONDS", 300.0),
            auth_cache_seconds=_float(env, "TOKENVAULT_AUTH_CACHE_SECONDS", 2.0),
            max_body_bytes=_int(env, "TOKENVAULT_MAX_BODY_BYTES", 5 * 1024 * 1024, 1024, 64 * 1024 * 1024),
            # Slow bodies (api/http/buffering.py): per worker process, 0 turns each off.
            bodies_per_address=_int(env, "TOKENVAULT_BODIES_PER_ADDRESS", 16, 0, 100_000),
            min_body_bytes_per_second=_float(env, "TOKENVAULT_MIN_BODY_BYTES_PER_SECOND", 1024.0, 0.0),
            body_grace_seconds=_float(env, "TOKENVAULT_BODY_GRACE_SECONDS", 5.0, 0.0),
            # A proxy list without a hop count means one proxy.
            proxy_hops=_int(env, "TOKENVAULT_PROXY_HOPS", 1 if forwarded_allow else 0, 0, 5),
            forwarded_allow=forwarded_allow,
            # The per-request watchdog (api/http/buffering.py): past it, 503 and the thread written off.
            request_seconds=_float(env, "TOKENVAULT_REQUEST_SECONDS", 30.0),
            log_level=(env.get("TOKENVAULT_LOG_LEVEL") or "info").lower(),
            # Beside the data directory, not inside it: a copy or restore of the data directory must not
            # carry the anchors along. Production: another filesystem or host (README, Audit).
            checkpoint_dir=Path(env.get("TOKENVAULT_AUDIT_CHECKPOINT_DIR")
                                or data_dir.parent / f"{data_dir.name}-audit-checkpoints"),
            # The window in which a worker's newest events are not anchored yet (also every 1,000 events).
            checkpoint_seconds=_float(env, "TOKENVAULT_AUDIT_CHECKPOINT_SECONDS", 1.0),
            integrity_watch=_choice(env, "TOKENVAULT_INTEGRITY_WATCH", ("lockdown", "alert", "off")),
            integrity_watch_seconds=_float(env, "TOKENVAULT_INTEGRITY_WATCH_SECONDS", 5.0),
            env=env,
        )

    def check_serving(self) -> None:
        """`tokenvault serve`: refuse settings that no longer do anything (one line, the setting named)."""
        for name, why in RETIRED.items():
            if self.env.get(name):
                raise ConfigurationError(f"{name} no longer applies: {why}")
