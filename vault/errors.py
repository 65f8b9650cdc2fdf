"""The one error hierarchy of TokenVault.

Messages never contain a submitted value: they name the field and the rule only.
Only api/ maps these to HTTP status codes.
"""

from __future__ import annotations

__all__ = [
    "VaultError",
    "ValidationFailed",
    "NotFound",
    "Unauthenticated",
    "StepUpRequired",
    "HumanRoleKeyRefused",
    "Forbidden",
    "Conflict",
    "LegalHold",
    "ClientSuspended",
    "PayloadTooLarge",
    "RateLimited",
    "DecryptionFailed",
    "IntegrityFailure",
    "IntegrityLockdown",
    "KeyServiceUnavailable",
    "StorageUnavailable",
    "AuditWriteFailed",
    "ConfigurationError",
    "UpstreamFailed",
]


class VaultError(Exception):
    """Root of every error TokenVault raises on purpose."""

    code = "internal_error"


class ValidationFailed(VaultError):
    """Input broke a rule; `field` and `rule` say which, never the value."""

    code = "invalid_input"

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(VaultError):
    """No such token, or one the caller may not see (the two are indistinguishable)."""

    code = "not_found"


class Unauthenticated(VaultError):
    code = "unauthenticated"


class StepUpRequired(Unauthenticated):
    """A sensitive action needs a fresh, unused TOTP code even within a valid session."""

    code = "step_up_required"


class HumanRoleKeyRefused(Unauthenticated):
    """An API key whose client carries a human role (admin, privacy officer, auditor...).

    Such keys were possible before roles were split into machines' and humans'; they stop
    working at upgrade. The code is stable so callers and alerts can tell why.
    """

    code = "api_key_role_not_allowed"

    def __init__(self, client_id: str, role: str) -> None:
        super().__init__("API keys may carry only machine roles")
        self.client_id = client_id
        self.role = role


class Forbidden(VaultError):
    """The caller's role may not use this operation at all."""

    code = "forbidden"


class ClientSuspended(Forbidden):
    """The client was suspended (its detokenize misses looked like guessing) until a second admin resumes it."""

    code = "client_suspended"


class Conflict(VaultError):
    code = "conflict"


class LegalHold(Conflict):
    """The subject's data is under a legal hold: nothing may delete, expire, purge or overwrite it."""

    code = "legal_hold"


class PayloadTooLarge(VaultError):
    code = "payload_too_large"


class RateLimited(VaultError):
    code = "rate_limited"

    def __init__(self, message: str = "too many requests", *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DecryptionFailed(VaultError):
    """Opaque on purpose: callers learn nothing about which check failed."""

    code = "decryption_failed"

    def __init__(self) -> None:
        super().__init__("decryption failed")


class IntegrityFailure(VaultError):
    """A row that decides access failed its MAC, or a deterministic index entry points at another value.

    Someone changed the database behind the vault's back. Never grants: the request is
    denied, and the failure is audited as an integrity event for the SIEM to alert on.
    The message names the table only, never a value.
    """

    code = "integrity_failure"

    def __init__(self, table: str) -> None:
        super().__init__(f"integrity check failed on {table}")
        self.table = table


class IntegrityLockdown(VaultError):
    """The integrity watch found the audit chain broken (vault.audit.watch): data and grants are refused.

    Someone deleted or changed audit events, perhaps to hide a restored row from the checks of
    vault.audit.facts; until the trail verifies again only admins and auditors are served.
    """

    code = "integrity_lockdown"


class KeyServiceUnavailable(VaultError):
    """The key provider cannot be reached, is sealed, or refused us."""

    code = "key_service_unavailable"


class StorageUnavailable(VaultError):
    code = "storage_unavailable"


class AuditWriteFailed(VaultError):
    """The audit event could not be written, so the operation did not happen."""

    code = "audit_unavailable"


class AuditKeyRefused(VaultError):
    """A MAC key named by an audit event, archive or checkpoint is not an audit key."""

    code = "audit_key_refused"


class ConfigurationError(VaultError):
    """Refuse to start: a setting, key file or policy is missing or unsafe."""

    code = "configuration_error"


class UpstreamFailed(VaultError):
    """A relay's upstream could not be reached, refused TLS, timed out, or answered beyond the limits."""

    code = "upstream_failed"

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout
