"""A database insider: rows edited, moved and replayed behind the service's back (SQLite and PostgreSQL).

Each tampered read must fail closed (DecryptionFailed or not found, never a wrong plaintext)
and leave an audit event with outcome `error`. Reads go through a second TokenService with
cold key caches, like another worker or a restarted one, so tampered key rows are really read.
Finally every table and the SQLite file itself are searched for the values used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text, update
from sqlalchemy.engine import make_url

from api.wiring import Components
from tests.attacks.support import leaks
from tests.conftest import Clock
from vault.access.operators import StepUp
from vault.audit.trail import Actor, AuditTrail, Origin
from vault.errors import DecryptionFailed, NotFound, VaultError
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_events, data_keys, domain_keys, tokens
from vault.tokens.records import TokenRecord, TokenRequest
from vault.tokens.service import TokenService

CHECKOUT = Actor(id="cli_checkout", role="checkout")
GATEWAY = Actor(id="cli_gateway", role="payment_gateway")
SHIPPING = Actor(id="cli_shipping", role="shipping")
SUPPORT = Actor(id="cli_support", role="support")
OFFICER = Actor(id="cli_officer", role="privacy_officer")
HERE = Origin(request_id="insider-1", source="127.0.0.1", user_agent="pytest-insider")

# Distinct from the other attack files' values, so a hit can only come from this test.
PAN_A = "4000056655665556"
PAN_B = "5555555555554444"
CVV = "7302"
EMAIL = "grace.hopper.insider@example.com"
NAME = "Grace Brewster Hopper"
STREET = "1701 Harbour Lane"
CARD_A = {"pan": PAN_A, "exp_month": 11, "exp_year": 2099, "holder": NAME}
CARD_B = {"pan": PAN_B, "exp_month": 10, "exp_year": 2098}
SHIP_TO = {"name": NAME, "line1": STREET, "city": "Arlington", "country": "US", "use": "shipping"}
BILL_TO = {**SHIP_TO, "use": "billing"}


def tokenize(parts: Components, kind: str, value: Any, **options: Any) -> TokenRecord:
    result = parts.tokens.tokenize(CHECKOUT, [TokenRequest(kind=kind, value=value, **options)], HERE)[0]
    assert isinstance(result, TokenRecord), result
    return result


def cold_service(parts: Components, clock: Clock) -> TokenService:
    """The same database and policy, but key caches that have seen nothing (another worker)."""
    keys = KeyHierarchy(parts.provider, cache_seconds=300, clock=clock)
    return TokenService(engine=parts.engine, keys=keys, policy=parts.policy, trail=AuditTrail(keys, clock=clock),
                        clock=clock)


def read(service: TokenService, actor: Actor, token: str, purpose: str) -> Any | VaultError:
    """The value, or the error the read ended with (per token or for the whole call)."""
    try:
        result = service.detokenize(actor, [token], purpose, HERE)[0]
    except VaultError as error:
        return error
    return result.error if result.error is not None else result.value


def assert_fails_closed(outcome: Any, *honest_values: Any) -> None:
    assert isinstance(outcome, DecryptionFailed | NotFound), f"tampered read returned {outcome!r}"
    assert outcome not in honest_values


def assert_audited_error(parts: Components, token: str) -> None:
    with parts.engine.connect() as conn:
        outcomes = conn.execute(select(audit_events.c.outcome, audit_events.c.error_code)
                                .where(audit_events.c.token == token, audit_events.c.action == "detokenize")).all()
    assert ("error", "decryption_failed") in [tuple(row) for row in outcomes], outcomes


def edit(parts: Components, table: Any, where: Any, **values: Any) -> None:
    with parts.engine.begin() as conn:
        assert conn.execute(update(table).where(where).values(**values)).rowcount == 1


def row_of(parts: Components, token: str) -> dict[str, Any]:
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(tokens).where(tokens.c.token == token)).mappings().one())


def flip(blob: bytes, position: int) -> bytes:
    return blob[:position] + bytes([blob[position] ^ 0x01]) + blob[position + 1:]


# -- tampering with token rows --------------------------------------------------------------------


def test_swapped_ciphertexts_fail_closed(components: Components, clock: Clock) -> None:
    a = tokenize(components, "card", CARD_A, subject_id="cust-a")
    b = tokenize(components, "card", CARD_B, subject_id="cust-a")
    row_a, row_b = row_of(components, a.token), row_of(components, b.token)
    edit(components, tokens, tokens.c.token == a.token, ciphertext=row_b["ciphertext"])
    edit(components, tokens, tokens.c.token == b.token, ciphertext=row_a["ciphertext"])
    service = cold_service(components, clock)
    for token in (a.token, b.token):
        assert_fails_closed(read(service, GATEWAY, token, "payment"), CARD_A, CARD_B)
        assert_audited_error(components, token)


def test_changed_kind_fails_closed(components: Components, clock: Clock) -> None:
    card = tokenize(components, "card", CARD_A)
    email = tokenize(components, "email", EMAIL)
    edit(components, tokens, tokens.c.token == card.token, kind="cvv")  # the gateway may read CVVs
    edit(components, tokens, tokens.c.token == email.token, kind="address")  # shipping may read addresses
    service = cold_service(components, clock)
    assert_fails_closed(read(service, GATEWAY, card.token, "payment"), CARD_A)
    assert_audited_error(components, card.token)
    outcome = read(service, SUPPORT, email.token, "support")
    assert_fails_closed(outcome, EMAIL)
    assert_audited_error(components, email.token)


def test_changed_subject_fails_closed(components: Components, clock: Clock) -> None:
    mine = tokenize(components, "address", SHIP_TO, subject_id="cust-victim")
    theirs = tokenize(components, "address", {**SHIP_TO, "city": "Boston"}, subject_id="cust-insider")
    edit(components, tokens, tokens.c.token == mine.token, subject_id="cust-insider")
    # ... and with the other subject's data key too: the record no longer matches either way.
    edit(components, tokens, tokens.c.token == theirs.token, subject_id="cust-victim",
         data_key_id=row_of(components, mine.token)["data_key_id"])
    service = cold_service(components, clock)
    for token in (mine.token, theirs.token):
        assert_fails_closed(read(service, SHIPPING, token, "fulfillment"), SHIP_TO)
        assert_audited_error(components, token)


def test_billing_flipped_to_shipping_in_metadata_fails_closed(components: Components, clock: Clock) -> None:
    """Metadata is clear text that the policy reads (`use`): editing it must not open a billing address."""
    billing = tokenize(components, "address", BILL_TO, subject_id="cust-b")
    assert isinstance(read(components.tokens, SHIPPING, billing.token, "fulfillment"), NotFound)
    meta = row_of(components, billing.token)["meta"].replace('"billing"', '"shipping"')
    edit(components, tokens, tokens.c.token == billing.token, meta=meta)
    assert_fails_closed(read(cold_service(components, clock), SHIPPING, billing.token, "fulfillment"), BILL_TO)
    assert_audited_error(components, billing.token)


def test_extended_expiry_fails_closed(components: Components, clock: Clock) -> None:
    cvv = tokenize(components, "cvv", CVV, ttl_seconds=60)
    expires = row_of(components, cvv.token)["expires_at"]
    edit(components, tokens, tokens.c.token == cvv.token, expires_at=expires.replace(year=expires.year + 1))
    clock.advance(120)  # past its real expiry, within the forged one
    assert_fails_closed(read(cold_service(components, clock), GATEWAY, cvv.token, "payment"), CVV)
    assert_audited_error(components, cvv.token)


def correct(parts: Components, token: str, value: Any) -> None:
    """Rectification (GDPR Art. 16) through whichever service offers it."""
    service = getattr(parts, "privacy", None) or parts.tokens
    if not hasattr(service, "correct"):
        pytest.skip("no correction operation in this tree")
    service.correct(StepUp(actor=OFFICER, at=datetime.now(UTC)), token, value, HERE)


def test_replayed_ciphertext_after_correction_fails_closed(components: Components, clock: Clock) -> None:
    record = tokenize(components, "email", EMAIL)
    old = row_of(components, record.token)
    correct(components, record.token, "grace.hopper.corrected@example.com")
    assert read(components.tokens, OFFICER, record.token, "legal") == "grace.hopper.corrected@example.com"
    edit(components, tokens, tokens.c.token == record.token, ciphertext=old["ciphertext"])
    assert_fails_closed(read(cold_service(components, clock), OFFICER, record.token, "legal"), EMAIL)
    assert_audited_error(components, record.token)


def test_replayed_row_of_a_subject_after_correction_fails_closed(components: Components, clock: Clock) -> None:
    record = tokenize(components, "email", EMAIL, subject_id="cust-rectified")
    old = row_of(components, record.token)
    correct(components, record.token, "grace.hopper.corrected@example.com")
    edit(components, tokens, tokens.c.token == record.token, ciphertext=old["ciphertext"],
         data_key_id=old["data_key_id"], meta=old["meta"])
    assert_fails_closed(read(cold_service(components, clock), OFFICER, record.token, "legal"), EMAIL)


# -- tampering with keys --------------------------------------------------------------------------


def _data_key_row(parts: Components, token: str) -> dict[str, Any]:
    key_id = row_of(parts, token)["data_key_id"]
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(data_keys).where(data_keys.c.id == key_id)).mappings().one())


def test_wrapped_data_key_moved_to_another_row_fails_closed(components: Components, clock: Clock) -> None:
    victim = tokenize(components, "card", CARD_A, subject_id="cust-victim")
    other = tokenize(components, "card", CARD_B, subject_id="cust-other")
    per_record = tokenize(components, "card", CARD_B)
    victim_key, other_key = _data_key_row(components, victim.token), _data_key_row(components, other.token)
    edit(components, data_keys, data_keys.c.id == victim_key["id"], wrapped=other_key["wrapped"])
    edit(components, data_keys, data_keys.c.id == _data_key_row(components, per_record.token)["id"],
         wrapped=victim_key["wrapped"])
    service = cold_service(components, clock)
    for token in (victim.token, per_record.token):
        assert_fails_closed(read(service, GATEWAY, token, "payment"), CARD_A, CARD_B)
        assert_audited_error(components, token)


def test_domain_key_blob_moved_fails_closed(components: Components, clock: Clock) -> None:
    card = tokenize(components, "card", CARD_A, subject_id="cust-a")
    cvv = tokenize(components, "cvv", CVV)
    with components.engine.connect() as conn:
        blobs = {row.active_for: (row.id, row.wrapped) for row in conn.execute(select(domain_keys))}
    data_id, data_blob = blobs["data"]
    cvv_id, cvv_blob = blobs["cvv"]
    edit(components, domain_keys, domain_keys.c.id == data_id, wrapped=cvv_blob)
    edit(components, domain_keys, domain_keys.c.id == cvv_id, wrapped=data_blob)
    service = cold_service(components, clock)
    assert_fails_closed(read(service, GATEWAY, card.token, "payment"), CARD_A)
    assert_audited_error(components, card.token)
    assert_fails_closed(read(service, GATEWAY, cvv.token, "payment"), CVV)
    assert_audited_error(components, cvv.token)


@pytest.mark.parametrize("where", ["nonce", "middle", "tag"])
def test_flipped_bit_in_wrapped_data_key_fails_closed(components: Components, clock: Clock, where: str) -> None:
    card = tokenize(components, "card", CARD_A, subject_id="cust-a")
    key = _data_key_row(components, card.token)
    blob = bytes(key["wrapped"])
    position = {"nonce": 0, "middle": len(blob) // 2, "tag": len(blob) - 1}[where]
    edit(components, data_keys, data_keys.c.id == key["id"], wrapped=flip(blob, position))
    assert_fails_closed(read(cold_service(components, clock), GATEWAY, card.token, "payment"), CARD_A)
    assert_audited_error(components, card.token)


def test_flipped_character_in_wrapped_domain_key_fails_closed(components: Components, clock: Clock) -> None:
    card = tokenize(components, "card", CARD_A)
    with components.engine.connect() as conn:
        key_id, wrapped = conn.execute(select(domain_keys.c.id, domain_keys.c.wrapped)
                                       .where(domain_keys.c.active_for == "data")).one()
    # (Appending "=" is no forgery: base64 ignores surplus padding and the same key opens. Nor is a
    # flip of the character before "==", whose low bits are padding: flip one inside the tag instead.)
    for forged in (wrapped[:-8] + ("A" if wrapped[-8] != "A" else "B") + wrapped[-7:],
                   wrapped.replace(":v1:", ":v9:"), wrapped.replace("local:", "vault:"), "garbage", ""):
        edit(components, domain_keys, domain_keys.c.id == key_id, wrapped=forged)
        assert_fails_closed(read(cold_service(components, clock), GATEWAY, card.token, "payment"), CARD_A)
    assert_audited_error(components, card.token)


# -- what an insider can read at rest -------------------------------------------------------------


def _dump(parts: Components) -> bytes:
    """SELECT * from every table, every column as its bytes (binary) or text."""
    chunks: list[bytes] = []
    with parts.engine.connect() as conn:
        for name in sorted(inspect(conn).get_table_names()):
            for row in conn.execute(text(f'SELECT * FROM "{name}"')):  # names come from the database itself
                for value in row:
                    chunks.append(bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode())
    return b"\x1f".join(chunks)


def _sqlite_files(url: str) -> list[Path]:
    database = make_url(url).database
    if not database:
        return []
    base = Path(database)
    return [path for path in (base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-journal"))
            if path.exists()]


def test_nothing_readable_at_rest(components: Components, clock: Clock, database_url: str) -> None:
    """After tokenizing, reading, denying, failing and deleting, no value is anywhere at rest."""
    cards = [tokenize(components, "card", CARD_A, subject_id="cust-a"), tokenize(components, "card", CARD_B)]
    cvv = tokenize(components, "cvv", CVV)
    email = tokenize(components, "email", EMAIL, subject_id="cust-a", deterministic=True)
    name = tokenize(components, "name", NAME)
    ship = tokenize(components, "address", SHIP_TO, subject_id="cust-a")
    assert read(components.tokens, GATEWAY, cards[0].token, "payment") == {**CARD_A}
    assert read(components.tokens, GATEWAY, cvv.token, "payment") == CVV
    assert read(components.tokens, SUPPORT, email.token, "support") != EMAIL
    assert isinstance(read(components.tokens, SHIPPING, cards[1].token, "fulfillment"), NotFound)
    assert read(components.tokens, SHIPPING, ship.token, "fulfillment")["line1"] == STREET
    components.tokens.delete(CHECKOUT, name.token, HERE)
    # Refused inputs that carry the values must leave nothing either.
    refused = components.tokens.tokenize(CHECKOUT, [TokenRequest(kind="card", value={**CARD_A, "exp_year": 2001}),
                                                    TokenRequest(kind="cvv", value=CVV, deterministic=True),
                                                    TokenRequest(kind="email", value=EMAIL + "@")], HERE)
    assert all(isinstance(result, VaultError) for result in refused)
    with pytest.raises(VaultError):
        components.tokens.metadata(SUPPORT, PAN_A, HERE)
    assert all(r.error is not None for r in components.tokens.detokenize(GATEWAY, [PAN_B, CVV], "payment", HERE))

    values = [PAN_A, PAN_B, EMAIL, NAME, STREET, "4000 0566 5566 5556", '"' + CVV + '"', "cvv=" + CVV]
    dump = _dump(components)
    assert dump, "nothing dumped"
    assert not leaks(dump, values), "value readable in a table"
    for path in _sqlite_files(database_url):
        assert not leaks(path.read_bytes(), values), f"value readable in {path.name}"
    if database_url.startswith("sqlite"):
        assert _sqlite_files(database_url), "the SQLite file was not found"
