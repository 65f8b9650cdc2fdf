"""The key hierarchy: few KMS calls, keys wrapped at rest, rotation of domain keys."""

from __future__ import annotations

from sqlalchemy import select

from api.wiring import Components
from tests.vault.tokens.test_service import CARD, CHECKOUT, GATEWAY, HERE, read, tokenize_one
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import data_keys, domain_keys
from vault.tokens.records import TokenRequest


def test_kms_calls_per_thousand_operations(components: Components) -> None:
    """After warm-up, 1,000 tokenizations and 1,000 reads cost no KMS call at all."""
    warm = tokenize_one(components, "card", CARD)
    read(components, GATEWAY, warm.token, "payment")
    before = components.provider.calls
    batch = [TokenRequest(kind="card", value=CARD, subject_id=f"s{i % 50}") for i in range(500)]
    batch += [TokenRequest(kind="email", value=f"u{i}@example.com") for i in range(500)]
    results = components.tokens.tokenize(CHECKOUT, batch, HERE)
    tokens = [r.token for r in results if hasattr(r, "token")]
    assert len(tokens) == 1000
    for start in range(0, 1000, 250):
        components.tokens.detokenize(GATEWAY, tokens[start:start + 250], "payment", HERE)
    assert components.provider.calls - before <= 1


def test_domain_keys_are_stored_wrapped(components: Components) -> None:
    with components.engine.connect() as conn:
        rows = conn.execute(select(domain_keys.c.purpose, domain_keys.c.wrapped, domain_keys.c.active_for)).all()
    assert {row.purpose for row in rows} == {"data", "cvv", "index", "auth", "audit", "totp", "relay", "row"}
    assert all(row.wrapped.startswith("local:v1:") for row in rows)


def test_rotated_domain_key_keeps_old_data_readable(components: Components) -> None:
    old = tokenize_one(components, "card", CARD)
    with components.engine.begin() as conn:
        new_id = components.keys.rotate_domain_key(conn, "data")
    fresh = tokenize_one(components, "card", CARD)
    with components.engine.connect() as conn:
        owners = dict(conn.execute(select(data_keys.c.id, data_keys.c.domain_key_id)).all())
        active = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == "data")).scalar_one()
    assert active == new_id
    assert new_id in owners.values() and len(set(owners.values())) == 2
    assert read(components, GATEWAY, old.token, "payment")["pan"] == "4111111111111111"
    assert read(components, GATEWAY, fresh.token, "payment")["pan"] == "4111111111111111"


def test_new_kek_version_keeps_domain_keys_readable(components: Components) -> None:
    record = tokenize_one(components, "card", CARD)
    components.provider.rotate()
    fresh_components_keys = type(components.keys)(components.provider)
    with components.engine.connect() as conn:
        key_id = conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == "data")).scalar_one()
        assert fresh_components_keys.domain_cipher(conn, key_id, "data") is not None
    assert read(components, GATEWAY, record.token, "payment")["exp_year"] == 2099


def test_record_keys_from_memory_only_once_the_domain_key_is_loaded(components: Components) -> None:
    """Tokenize seals before its transaction only from keys in memory; a cold process does no I/O for it."""
    cold = KeyHierarchy(components.provider)
    assert cold.new_record_key_from_memory("data") is None
    with components.engine.connect() as conn:
        cold.domain_cipher(conn, cold.active_domain_key_id(conn, "data"), "data")
    calls = components.provider.calls
    key = cold.new_record_key_from_memory("data")
    assert key is not None and components.provider.calls == calls
    sealed = key.cipher.seal(b"value", b"aad")
    with components.engine.connect() as conn:
        # another process, from the stored row
        reopened = components.keys.open_data_keys(conn, [key.row], ("data",))[key.id]
    assert reopened.open(sealed, b"aad") == b"value"
    assert key.row["subject_id"] is None and key.row["purpose"] == "data"
