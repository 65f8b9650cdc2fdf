"""Access-control settings from the environment: sessions, password cost, lockout, rate limits.

Read once at start and validated against the policy: a rate limit for a role the
policy does not define, or a malformed limit, refuses to start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from limits import parse_many

from vault.access.operators import Lockout
from vault.access.passwords import Argon2Params
from vault.access.policy import Policy
from vault.errors import ConfigurationError

__all__ = ["AccessSettings"]

_RATE_PREFIX = "TOKENVAULT_RATE_LIMIT_"
# Detokenize quotas count values (tokens), not requests. Roles that read for people (support) or for
# partners (shipping, marketing) get daily caps by default, so a stolen key extracts a day's worth slowly,
# not the vault: support 500 masked values a day, shipping and marketing 20,000 (a busy shop's orders).
# Only the role's own variable (TOKENVAULT_DETOKENIZE_RATE_LIMIT_<ROLE>) replaces its cap; the global
# TOKENVAULT_DETOKENIZE_RATE_LIMIT applies to the other roles.
DEFAULT_ROLE_ITEM_LIMITS = {
    "support": "60/minute;500/day",
    "shipping": "50/second;20000/day",
    "marketing": "50/second;20000/day",
}
_DETOKENIZE_PREFIX = "TOKENVAULT_DETOKENIZE_RATE_LIMIT_"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name) or ""
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _limit(name: str, value: str) -> str:
    """A `limits` rule such as `100/second` or `10/second;500/minute`."""
    try:
        if not parse_many(value):
            raise ValueError(value)
    except ValueError:
        raise ConfigurationError(f"{name} is not a rate limit like `100/second` or `10/second;500/minute`") from None
    return value


def _per_role(env: Mapping[str, str], prefix: str, policy: Policy) -> dict[str, str]:
    out = {}
    for name, value in env.items():
        if name.startswith(prefix) and value:
            role = name.removeprefix(prefix).lower()
            if not policy.has_role(role):
                raise ConfigurationError(f"{name} names role {role!r}, which the policy does not define")
            out[role] = _limit(name, value)
    return out


@dataclass(frozen=True)
class AccessSettings:
    session_seconds: int = 900
    argon2: Argon2Params = field(default_factory=Argon2Params)
    lockout: Lockout = field(default_factory=Lockout)
    approval_seconds: int = 24 * 3600
    enrolment_seconds: int = 24 * 3600
    redis_url: str | None = None
    # Per client (API key or operator): requests over all /v1 endpoints, and values (tokens) detokenized.
    # High enough for machine traffic at this service's capacity (~2,000 requests/s); roles that read
    # for people or partners get daily caps (DEFAULT_ROLE_ITEM_LIMITS), tightened further per role.
    rate_limit: str = "2000/second"
    detokenize_rate_limit: str = "5000/second"  # values: a full batch of 1,000 fits
    # Per source address, before anyone is authenticated.
    login_rate_limit: str = "10/minute"
    # Failed authentications per source address (api/http/auth_flood.py): past it, 429 before the database.
    auth_failure_rate_limit: str = "20/minute"
    role_rate_limits: dict[str, str] = field(default_factory=dict)
    role_detokenize_rate_limits: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str], policy: Policy) -> AccessSettings:
        default = cls()
        return cls(
            session_seconds=_int(env, "TOKENVAULT_SESSION_SECONDS", default.session_seconds, 60, 12 * 3600),
            argon2=Argon2Params(
                time_cost=_int(env, "TOKENVAULT_ARGON2_TIME_COST", default.argon2.time_cost, 1, 20),
                memory_kib=_int(env, "TOKENVAULT_ARGON2_MEMORY_KIB", default.argon2.memory_kib, 32, 4 * 1024 * 1024),
                parallelism=_int(env, "TOKENVAULT_ARGON2_PARALLELISM", default.argon2.parallelism, 1, 16),
            ),
            lockout=Lockout(
                threshold=_int(env, "TOKENVAULT_LOCKOUT_THRESHOLD", default.lockout.threshold, 1, 100),
                base_seconds=_int(env, "TOKENVAULT_LOCKOUT_SECONDS", default.lockout.base_seconds, 1, 86400),
                max_seconds=_int(env, "TOKENVAULT_LOCKOUT_MAX_SECONDS", default.lockout.max_seconds, 1, 7 * 86400),
            ),
            approval_seconds=_int(env, "TOKENVAULT_APPROVAL_SECONDS", default.approval_seconds, 60, 30 * 86400),
            enrolment_seconds=_int(env, "TOKENVAULT_ENROLMENT_SECONDS", default.enrolment_seconds, 300, 30 * 86400),
            redis_url=env.get("TOKENVAULT_REDIS_URL") or None,
            rate_limit=_limit("TOKENVAULT_RATE_LIMIT", env.get("TOKENVAULT_RATE_LIMIT") or default.rate_limit),
            detokenize_rate_limit=_limit("TOKENVAULT_DETOKENIZE_RATE_LIMIT",
                                         env.get("TOKENVAULT_DETOKENIZE_RATE_LIMIT")
                                         or default.detokenize_rate_limit),
            login_rate_limit=_limit("TOKENVAULT_LOGIN_RATE_LIMIT",
                                    env.get("TOKENVAULT_LOGIN_RATE_LIMIT") or default.login_rate_limit),
            auth_failure_rate_limit=_limit("TOKENVAULT_AUTH_FAILURE_RATE_LIMIT",
                                           env.get("TOKENVAULT_AUTH_FAILURE_RATE_LIMIT")
                                           or default.auth_failure_rate_limit),
            role_rate_limits=_per_role(env, _RATE_PREFIX, policy),
            role_detokenize_rate_limits={
                **{role: limit for role, limit in DEFAULT_ROLE_ITEM_LIMITS.items() if policy.has_role(role)},
                **_per_role(env, _DETOKENIZE_PREFIX, policy)},
        )

    def rate_limit_for(self, role: str) -> str:
        return self.role_rate_limits.get(role, self.rate_limit)

    def detokenize_rate_limit_for(self, role: str) -> str:
        """The role's quota of detokenized values (each token of a batch counts once)."""
        return self.role_detokenize_rate_limits.get(role, self.detokenize_rate_limit)
