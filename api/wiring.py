"""The one place where settings become components: engine, key provider, services.

Both the Flask app and the CLI get their services from here and never build them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from api.access_settings import AccessSettings
from api.http.metrics import InstrumentedProvider, observe_audit_write, observe_key_cache
from api.settings import Settings
from kms.local import LocalKeyProvider, load_master_key
from vault.access.approvals import ApprovalAction, Approvals
from vault.access.clients import ClientRegistry
from vault.access.enrolment import Enrolments
from vault.access.identity import Authenticator
from vault.access.operators import OperatorRegistry
from vault.access.passwords import Passwords
from vault.access.policy import Policy, load_policy
from vault.access.sessions import Sessions
from vault.audit.alerts import Alerts
from vault.audit.log import AuditLog
from vault.audit.trail import AuditTrail
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.provider import KeyProvider
from vault.keys.rotation import KeyLifecycle
from vault.privacy.disclosures import DisclosureService
from vault.privacy.retention import RetentionService
from vault.privacy.rights import PrivacyService
from vault.privacy.transfer import check_transfer_params
from vault.storage.schema import create_engine_for
from vault.tokens.service import TokenService

__all__ = ["Components", "build", "build_provider"]


def build_provider(settings: Settings) -> KeyProvider:
    if settings.kms == "vault":
        from kms.vault_transit import VaultConfig, VaultTransitProvider

        return VaultTransitProvider(config=VaultConfig.from_env(settings.env))
    master = load_master_key(dict(settings.env), settings.data_dir / "master.key")
    return LocalKeyProvider(keyring_path=settings.data_dir / "keyring.json", master_key=master)


@dataclass(frozen=True)
class Components:
    settings: Settings
    engine: Engine
    provider: KeyProvider
    keys: KeyHierarchy
    policy: Policy
    trail: AuditTrail
    audit_log: AuditLog
    clients: ClientRegistry
    tokens: TokenService
    privacy: PrivacyService
    disclosures: DisclosureService
    retention: RetentionService
    lifecycle: KeyLifecycle
    access: AccessSettings
    operators: OperatorRegistry
    enrolments: Enrolments
    approvals: Approvals
    authenticator: Authenticator
    alerts: Alerts


def build(
    settings: Settings,
    *,
    provider: KeyProvider | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Components:
    """Build every component; `clock` is injectable so tests never sleep."""
    now = clock or (lambda: datetime.now(UTC))
    policy = load_policy(settings.policy_path)
    engine = create_engine_for(settings.database_url, pool_size=4)
    provider = InstrumentedProvider(provider or build_provider(settings))
    keys = KeyHierarchy(provider, cache_seconds=settings.key_cache_seconds, clock=now, on_lookup=observe_key_cache)
    trail = AuditTrail(keys, checkpoint_dir=settings.checkpoint_dir, clock=now, on_write=observe_audit_write)
    token_service = TokenService(engine=engine, keys=keys, policy=policy, trail=trail, clock=now)
    access = AccessSettings.from_env(settings.env, policy)
    clients = ClientRegistry(engine, keys, policy, trail, cache_seconds=settings.auth_cache_seconds, clock=now)
    passwords = Passwords(access.argon2)
    sessions = Sessions(keys, lifetime=timedelta(seconds=access.session_seconds))
    enrolments = Enrolments(engine=engine, keys=keys, policy=policy, trail=trail, passwords=passwords,
                            sessions=sessions, lifetime=timedelta(seconds=access.enrolment_seconds), clock=now)
    operators = OperatorRegistry(engine=engine, keys=keys, policy=policy, trail=trail, passwords=passwords,
                                 lockout=access.lockout, clock=now, sessions=sessions, enrolments=enrolments)
    approvals = Approvals(engine=engine, policy=policy, trail=trail, clock=now)
    approvals.register(ApprovalAction(name="disable_operator", operation="manage_operators",
                                      run=operators.run_disable, check=operators.check_disable,
                                      lifetime=timedelta(seconds=access.approval_seconds)))
    approvals.register(ApprovalAction(name="enable_operator", operation="manage_operators",
                                      run=operators.run_enable, check=operators.check_enable,
                                      lifetime=timedelta(seconds=access.approval_seconds)))
    # Resetting another operator's password and TOTP: the code goes half to each admin (split knowledge).
    approvals.register(ApprovalAction(name="reenrol_operator", operation="manage_operators",
                                      run=operators.run_reenrol, check=operators.check_reenrol,
                                      lifetime=timedelta(seconds=access.approval_seconds)))
    lifecycle = KeyLifecycle(engine=engine, keys=keys, provider=provider, policy=policy, trail=trail,
                             cache_seconds=settings.key_cache_seconds, clock=now)
    # Irreversible key actions need a second admin (PCI DSS 3.6.1.2 split knowledge and dual control).
    approvals.register(ApprovalAction(
        name="retire_kek", operation="manage_keys", check=lifecycle.check_retire,
        run=lambda conn, actor, params, origin: lifecycle.retire_in(conn, actor, int(params["below"]), origin),
        lifetime=timedelta(seconds=access.approval_seconds)))
    approvals.register(ApprovalAction(
        name="reencrypt_domain_key", operation="manage_keys", check=lifecycle.check_reencrypt,
        run=lambda conn, actor, params, origin: {
            "job_id": lifecycle.reencrypt_in(conn, actor, str(params["domain_key"]), origin)},
        lifetime=timedelta(seconds=access.approval_seconds)))
    # A business transfer hands data to another company: a second privacy officer approves it.
    approvals.register(ApprovalAction(
        name="transfer_export", operation="export", check=check_transfer_params,
        run=lambda conn, actor, params, origin: {"approved": True},
        lifetime=timedelta(seconds=access.approval_seconds)))
    return Components(
        settings=settings,
        engine=engine,
        provider=provider,
        keys=keys,
        policy=policy,
        trail=trail,
        audit_log=AuditLog(engine, trail, policy, clock=now),
        clients=clients,
        tokens=token_service,
        privacy=PrivacyService(engine=engine, keys=keys, policy=policy, trail=trail, tokens_service=token_service,
                               clock=now),
        disclosures=DisclosureService(engine=engine, policy=policy, trail=trail, tokens_service=token_service,
                                      clock=now),
        retention=RetentionService(engine=engine, policy=policy, trail=trail, tokens_service=token_service,
                                   clock=now),
        lifecycle=lifecycle,
        access=access,
        operators=operators,
        enrolments=enrolments,
        approvals=approvals,
        authenticator=Authenticator(clients, operators),
        alerts=Alerts(engine, trail, clock=now),
    )
