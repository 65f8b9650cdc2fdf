"""The one place where settings become components: engine, key provider, services.

Both the Flask app and the CLI get their services from here and never build them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Engine

from api.access_settings import AccessSettings
from api.http.metrics import InstrumentedProvider, observe_audit_write, observe_key_cache, observe_relay_call
from api.settings import Settings
from api.upstream import HttpsTransport
from kms.local import LocalKeyProvider, load_master_key
from vault.access.approvals import ApprovalAction, Approvals
from vault.access.clients import ClientRegistry
from vault.access.enrolment import Enrolments
from vault.access.guessing import GuessingGuard
from vault.access.identity import Authenticator
from vault.access.operators import OperatorRegistry
from vault.access.passwords import Passwords
from vault.access.policy import Policy, load_policy
from vault.access.sessions import Sessions
from vault.audit.alerts import Alerts
from vault.audit.checkpoints import CheckpointSigner, CheckpointSink, Signer, SyslogMirror, UpgradedSigner
from vault.audit.facts import witnessed_generation
from vault.audit.lockdown import Lockdown
from vault.audit.log import AuditLog
from vault.audit.trail import AuditTrail
from vault.audit.watch import IntegrityWatch
from vault.errors import ConfigurationError
from vault.keys.epoch import KeyEpoch
from vault.keys.hierarchy import KeyHierarchy
from vault.keys.provider import KeyProvider
from vault.keys.rotation import KeyLifecycle
from vault.keys.row_mac import RowMacs
from vault.privacy.disclosures import DisclosureService
from vault.privacy.retention import RetentionService
from vault.privacy.rights import PrivacyService
from vault.privacy.transfer import check_transfer_params
from vault.relay.changes import ACTION as RELAY_ACTION
from vault.relay.changes import OPERATION as RELAY_OPERATION
from vault.relay.changes import RouteChanges
from vault.relay.routes import RouteBook
from vault.relay.service import RelayService
from vault.relay.upstream import Transport
from vault.storage.engine import create_engine_for, create_snapshot_reader
from vault.tokens.service import TokenService

__all__ = ["Components", "build", "build_provider"]


def build_provider(settings: Settings) -> KeyProvider:
    if settings.kms == "vault":
        from kms.vault_transit import VaultConfig, VaultTransitProvider

        return VaultTransitProvider(config=VaultConfig.from_env(settings.env))
    master = load_master_key(dict(settings.env), settings.data_dir / "master.key")
    return LocalKeyProvider(keyring_path=settings.data_dir / "keyring.json", master_key=master)


def build_checkpoint_sinks(settings: Settings) -> list[CheckpointSink]:
    """Sinks besides the file: `TOKENVAULT_AUDIT_KV=<mount>/<path>` adds KV v2 (VAULT_ADDR, VAULT_TOKEN)."""
    where = settings.env.get("TOKENVAULT_AUDIT_KV")
    if not where:
        return []
    from kms.kv_checkpoints import KvCheckpointSink

    mount, _, path = where.strip("/").partition("/")
    if not mount or not path:
        raise ConfigurationError("TOKENVAULT_AUDIT_KV must be <kv v2 mount>/<path>")
    return [KvCheckpointSink(_vault_client(settings, "TOKENVAULT_AUDIT_KV"), mount=mount, path=path)]


def _vault_client(settings: Settings, what: str) -> Any:
    import hvac

    from kms.vault_config import VaultConfig

    config = VaultConfig.from_env(settings.env)
    if config.token is None:
        raise ConfigurationError(f"{what} needs VAULT_TOKEN (a token allowed only what it needs)")
    return hvac.Client(url=config.addr, token=config.token.expose(), namespace=config.namespace,
                       verify=config.ca_cert or not config.skip_verify,
                       timeout=(config.connect_timeout, config.read_timeout))


def checkpoint_signing(settings: Settings) -> str:
    """`transit` (the default with the Vault provider) or `sealed` (the default with the local one)."""
    how = settings.env.get("TOKENVAULT_AUDIT_SIGNING") or ("transit" if settings.kms == "vault" else "sealed")
    if how not in ("sealed", "transit"):
        raise ConfigurationError("TOKENVAULT_AUDIT_SIGNING must be `sealed` or `transit`")
    return how


def signing_key_name(settings: Settings) -> str:
    from kms.transit_signing import DEFAULT_NAME

    return settings.env.get("TOKENVAULT_AUDIT_SIGNING_KEY") or DEFAULT_NAME


def transit_provider(settings: Settings, provider: KeyProvider) -> Any:
    """The Vault provider to sign with: the KEK's own (same login), or one from VAULT_* with the local KEK."""
    from kms.vault_transit import VaultConfig, VaultTransitProvider

    return provider if isinstance(provider, VaultTransitProvider) else VaultTransitProvider(
        config=VaultConfig.from_env(settings.env))


def build_checkpoint_signer(settings: Settings, provider: KeyProvider) -> Signer | None:
    """Transit (the default with the Vault provider): a non-exportable Transit ed25519 key signs checkpoints.

    `sealed` (the default with the local provider): an ed25519 seed sealed by the key provider
    signs them (None here: the trail builds that signer). A vault upgraded from sealed to Transit
    signing keeps verifying its old entries (UpgradedSigner).
    """
    if checkpoint_signing(settings) == "sealed":
        return None
    from kms.transit_signing import TransitSigner

    signer = TransitSigner(transit_provider(settings, provider), name=signing_key_name(settings))
    return UpgradedSigner(signer, CheckpointSigner(provider))


def build_checkpoint_mirrors(settings: Settings) -> list[SyslogMirror]:
    """`TOKENVAULT_AUDIT_SYSLOG=host:port`: every checkpoint line also to a syslog collector over TCP."""
    where = settings.env.get("TOKENVAULT_AUDIT_SYSLOG")
    if not where:
        return []
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError("TOKENVAULT_AUDIT_SYSLOG must be host:port")
    return [SyslogMirror(host.strip("[]"), int(port))]


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
    epochs: KeyEpoch
    access: AccessSettings
    operators: OperatorRegistry
    enrolments: Enrolments
    approvals: Approvals
    authenticator: Authenticator
    alerts: Alerts
    relay: RelayService
    relay_routes: RouteChanges
    lockdown: Lockdown
    watch: IntegrityWatch


def build(
    settings: Settings,
    *,
    provider: KeyProvider | None = None,
    clock: Callable[[], datetime] | None = None,
    transport: Transport | None = None,
) -> Components:
    """Build every component; `clock` is injectable so tests never sleep."""
    now = clock or (lambda: datetime.now(UTC))
    policy = load_policy(settings.policy_path)
    engine = create_engine_for(settings.database_url, pool_size=4)
    raw_provider = provider or build_provider(settings)
    provider = InstrumentedProvider(raw_provider)
    keys = KeyHierarchy(provider, cache_seconds=settings.key_cache_seconds, clock=now, on_lookup=observe_key_cache)
    keys.witnessed = lambda conn, purpose: witnessed_generation(conn, keys, purpose)
    trail = AuditTrail(keys, checkpoint_dir=settings.checkpoint_dir, checkpoint_seconds=settings.checkpoint_seconds,
                       sinks=build_checkpoint_sinks(settings), mirrors=build_checkpoint_mirrors(settings),
                       signer=build_checkpoint_signer(settings, raw_provider), clock=now,
                       on_write=observe_audit_write)
    lockdown = Lockdown(engine, trail)
    guessing = GuessingGuard(trail, RowMacs(keys), clock=now)
    token_service = TokenService(engine=engine, keys=keys, policy=policy, trail=trail, clock=now, guessing=guessing)
    access = AccessSettings.from_env(settings.env, policy)
    clients = ClientRegistry(engine, keys, policy, trail, cache_seconds=settings.auth_cache_seconds, clock=now)
    passwords = Passwords(access.argon2)
    sessions = Sessions(keys, lifetime=timedelta(seconds=access.session_seconds))
    enrolments = Enrolments(engine=engine, keys=keys, policy=policy, trail=trail, passwords=passwords,
                            sessions=sessions, lifetime=timedelta(seconds=access.enrolment_seconds), clock=now)
    operators = OperatorRegistry(engine=engine, keys=keys, policy=policy, trail=trail, passwords=passwords,
                                 lockout=access.lockout, clock=now, sessions=sessions, enrolments=enrolments)
    approvals = Approvals(engine=engine, policy=policy, trail=trail, macs=RowMacs(keys), clock=now, lockdown=lockdown)
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
    epochs = KeyEpoch(engine, keys, clock=now)
    lifecycle = KeyLifecycle(engine=engine, keys=keys, provider=provider, policy=policy, trail=trail,
                             cache_seconds=settings.key_cache_seconds, clock=now, epochs=epochs)
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
    privacy = PrivacyService(engine=engine, keys=keys, policy=policy, trail=trail, tokens_service=token_service,
                             clock=now)
    # A client suspended for guessing tokens calls again only once a second admin agrees.
    approvals.register(ApprovalAction(
        name="resume_client", operation="manage_clients", check=guessing.check_resume, run=guessing.run_resume,
        lifetime=timedelta(seconds=access.approval_seconds)))
    # A legal hold blocks every deletion: lifting it takes a second privacy officer.
    approvals.register(ApprovalAction(
        name="release_hold", operation="manage_subjects", check=privacy.check_release_hold,
        run=privacy.run_release_hold, lifetime=timedelta(seconds=access.approval_seconds)))
    # Relay routes change under dual control too: a second admin approves each version.
    book = RouteBook(keys, clock=now)
    relay_routes = RouteChanges(engine=engine, policy=policy, trail=trail, book=book, clock=now)
    approvals.register(ApprovalAction(
        name=RELAY_ACTION, operation=RELAY_OPERATION, check=relay_routes.check_approval,
        run=relay_routes.run_approval, lifetime=timedelta(seconds=access.approval_seconds)))
    relay = RelayService(engine=engine, policy=policy, trail=trail, tokens=token_service, book=book,
                         transport=transport or HttpsTransport(), clock=now, on_call=observe_relay_call)
    audit_log = AuditLog(engine, trail, policy, clock=now, reader=lambda: create_snapshot_reader(settings.database_url))
    return Components(
        settings=settings,
        engine=engine,
        provider=provider,
        keys=keys,
        policy=policy,
        trail=trail,
        audit_log=audit_log,
        clients=clients,
        tokens=token_service,
        privacy=privacy,
        disclosures=DisclosureService(engine=engine, policy=policy, trail=trail, tokens_service=token_service,
                                      macs=RowMacs(keys), clock=now),
        retention=RetentionService(engine=engine, policy=policy, trail=trail, tokens_service=token_service,
                                   macs=RowMacs(keys),
                                   clock=now),
        lifecycle=lifecycle,
        epochs=epochs,
        access=access,
        operators=operators,
        enrolments=enrolments,
        approvals=approvals,
        authenticator=Authenticator(clients, operators, lockdown),
        alerts=Alerts(engine, trail, clock=now),
        relay=relay,
        relay_routes=relay_routes,
        lockdown=lockdown,
        # Started by each server worker (api.http.app.wsgi_app), not by the CLI or tests' apps.
        watch=IntegrityWatch(audit_log, trail, lockdown, seconds=settings.integrity_watch_seconds,
                             lock=settings.integrity_watch == "lockdown", clock=now),
    )
