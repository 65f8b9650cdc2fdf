"""TokenService on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from api.wiring import Components
from tests.conftest import Clock
from vault.audit.trail import Actor, Origin
from vault.errors import DecryptionFailed, Forbidden, NotFound, ValidationFailed, VaultError
from vault.storage.schema import audit_events, data_keys, tokens
from vault.tokens.records import TokenRecord, TokenRequest

CHECKOUT = Actor(id="cli_checkout", role="checkout")
GATEWAY = Actor(id="cli_gateway", role="payment_gateway")
SHIPPING = Actor(id="cli_shipping", role="shipping")
SUPPORT = Actor(id="cli_support", role="support")
HERE = Origin(request_id="req-1", source="127.0.0.1", user_agent="pytest")
CARD = {"pan": "4111 1111 1111 1111", "exp_month": 12, "exp_year": 2099, "holder": "Ada Lovelace"}
SHIP_TO = {"name": "Zoë Ωmega", "line1": "1 Rue de Rivoli", "city": "Paris", "country": "FR", "use": "shipping"}


def tokenize_one(parts: Components, kind: str, value: Any, **options: Any) -> TokenRecord:
    result = parts.tokens.tokenize(CHECKOUT, [TokenRequest(kind=kind, value=value, **options)], HERE)[0]
    assert isinstance(result, TokenRecord), result
    return result


def read(parts: Components, actor: Actor, token: str, purpose: str) -> Any:
    result = parts.tokens.detokenize(actor, [token], purpose, HERE)[0]
    if result.error is not None:
        raise result.error
    return result.value


def count(parts: Components, table: Any, *where: Any) -> int:
    with parts.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def test_card_round_trip(components: Components) -> None:
    record = tokenize_one(components, "card", CARD)
    assert len(record.token) == 16 and record.token.endswith("1111")
    assert record.metadata == {"brand": "visa", "last4": "1111", "exp_month": 12, "exp_year": 2099}
    value = read(components, GATEWAY, record.token, "payment")
    assert value == {"pan": "4111111111111111", "exp_month": 12, "exp_year": 2099, "holder": "Ada Lovelace"}


def test_each_kind_round_trips(components: Components) -> None:
    samples = {"address": SHIP_TO, "email": "jane@example.com", "phone": "+1 415 555 2671"}
    for kind, value in samples.items():
        record = tokenize_one(components, kind, value)
        assert record.token.startswith(f"tok_{kind}_")
    support = tokenize_one(components, "email", "jane@example.com")
    assert read(components, SUPPORT, support.token, "support") == "j***@example.com"


def test_shipping_sees_shipping_addresses_only(components: Components) -> None:
    ship = tokenize_one(components, "address", SHIP_TO)
    bill = tokenize_one(components, "address", {**SHIP_TO, "use": "billing"})
    card = tokenize_one(components, "card", CARD)
    assert read(components, SHIPPING, ship.token, "fulfillment")["city"] == "Paris"
    assert "use" not in read(components, SHIPPING, ship.token, "fulfillment")
    for token in (bill.token, card.token):
        with pytest.raises(NotFound):
            read(components, SHIPPING, token, "fulfillment")
    with pytest.raises(NotFound):
        read(components, SHIPPING, ship.token, "marketing")


def test_checkout_may_not_detokenize(components: Components) -> None:
    record = tokenize_one(components, "card", CARD)
    with pytest.raises(Forbidden):
        components.tokens.detokenize(CHECKOUT, [record.token], "payment", HERE)
    assert count(components, audit_events, audit_events.c.actor == CHECKOUT.id,
                 audit_events.c.outcome == "denied") == 1


def test_batch_keeps_order_and_reports_errors_per_item(components: Components) -> None:
    requests = [
        TokenRequest(kind="card", value=CARD),
        TokenRequest(kind="card", value={**CARD, "pan": "4111111111111112"}),
        TokenRequest(kind="email", value="a@example.com"),
    ]
    results = components.tokens.tokenize(CHECKOUT, requests, HERE)
    assert isinstance(results[0], TokenRecord) and isinstance(results[2], TokenRecord)
    assert isinstance(results[1], ValidationFailed) and results[1].field == "value.pan"
    assert "4111111111111112" not in str(results[1])
    assert count(components, tokens) == 2


def test_expired_card_is_refused(components: Components) -> None:
    result = components.tokens.tokenize(CHECKOUT, [TokenRequest(kind="card", value={**CARD, "exp_year": 2001})],
                                        HERE)[0]
    assert isinstance(result, ValidationFailed)


def test_deterministic_tokens_repeat_and_differ_by_subject(components: Components) -> None:
    first = tokenize_one(components, "email", "jane@example.com", deterministic=True, subject_id="c1")
    again = tokenize_one(components, "email", "jane@EXAMPLE.com", deterministic=True, subject_id="c1")
    other = tokenize_one(components, "email", "jane@example.com", deterministic=True, subject_id="c2")
    random = tokenize_one(components, "email", "jane@example.com", subject_id="c1")
    assert first.token == again.token
    assert other.token != first.token and random.token != first.token
    with components.engine.connect() as conn:
        lookups = conn.execute(select(tokens.c.lookup).where(tokens.c.lookup.is_not(None))).scalars().all()
    assert all(len(lookup) == 32 for lookup in lookups)


def test_deterministic_duplicates_within_one_batch_share_a_token(components: Components) -> None:
    request = TokenRequest(kind="card", value=CARD, deterministic=True)
    results = components.tokens.tokenize(CHECKOUT, [request, request, request], HERE)
    assert len({r.token for r in results if isinstance(r, TokenRecord)}) == 1
    assert count(components, tokens) == 1


def test_deterministic_tokens_concurrently_yield_one_token(components: Components) -> None:
    found: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            found.append(tokenize_one(components, "card", CARD, deterministic=True).token)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(found)) == 1 and len(found) == 8
    assert count(components, tokens) == 1


def test_cvv_is_readable_once(components: Components) -> None:
    record = tokenize_one(components, "cvv", "123")
    assert record.expires_at is not None
    assert read(components, GATEWAY, record.token, "payment") == "123"
    with pytest.raises(NotFound):
        read(components, GATEWAY, record.token, "payment")
    assert count(components, tokens) == 0
    assert count(components, data_keys, data_keys.c.subject_id.is_(None)) == 0


def test_cvv_concurrent_reads_return_it_once(components: Components) -> None:
    record = tokenize_one(components, "cvv", "4321")
    values: list[Any] = []

    def worker() -> None:
        try:
            values.append(read(components, GATEWAY, record.token, "payment"))
        except NotFound:
            values.append(None)
        except VaultError as exc:
            values.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert values.count("4321") == 1
    assert values.count(None) == 5


def test_cvv_expires(components: Components, clock: Clock) -> None:
    record = tokenize_one(components, "cvv", "123", ttl_seconds=60)
    clock.advance(61)
    with pytest.raises(NotFound):
        read(components, GATEWAY, record.token, "payment")
    assert components.tokens.purge_expired() == 1
    assert count(components, tokens) == 0


def test_cvv_ttl_is_capped(components: Components) -> None:
    result = components.tokens.tokenize(CHECKOUT, [TokenRequest(kind="cvv", value="123", ttl_seconds=3601)],
                                        HERE)[0]
    assert isinstance(result, ValidationFailed) and result.field == "ttl_seconds"


def test_ttl_tokens_expire_and_are_purged(components: Components, clock: Clock) -> None:
    record = tokenize_one(components, "email", "a@example.com", ttl_seconds=10)
    keep = tokenize_one(components, "email", "b@example.com")
    clock.advance(11)
    with pytest.raises(NotFound):
        components.tokens.metadata(CHECKOUT, record.token, HERE)
    assert components.tokens.purge_expired() == 1
    assert components.tokens.metadata(CHECKOUT, keep.token, HERE).token == keep.token


def test_delete_removes_token_and_its_key(components: Components) -> None:
    record = tokenize_one(components, "card", CARD)
    components.tokens.delete(CHECKOUT, record.token, HERE)
    with pytest.raises(NotFound):
        components.tokens.metadata(CHECKOUT, record.token, HERE)
    assert count(components, data_keys) == 0
    with pytest.raises(NotFound):
        components.tokens.delete(CHECKOUT, record.token, HERE)


def test_subject_tokens_share_one_data_key(components: Components) -> None:
    tokenize_one(components, "card", CARD, subject_id="cust-1")
    tokenize_one(components, "email", "x@example.com", subject_id="cust-1")
    tokenize_one(components, "cvv", "999", subject_id="cust-1")
    assert count(components, data_keys, data_keys.c.subject_id == "cust-1") == 2  # data + cvv purposes


def test_destroying_a_subject_key_makes_its_data_unreadable(components: Components) -> None:
    """Crypto-shredding: without the subject's data key the ciphertext is useless."""
    record = tokenize_one(components, "card", CARD, subject_id="cust-9")
    with components.engine.begin() as conn:
        key_id = conn.execute(select(tokens.c.data_key_id).where(tokens.c.token == record.token)).scalar_one()
        conn.execute(text("DELETE FROM tokens WHERE token = :t"), {"t": record.token})
        conn.execute(text("DELETE FROM data_keys WHERE id = :k"), {"k": key_id})
    with pytest.raises(NotFound):
        read(components, GATEWAY, record.token, "payment")


def test_swapped_ciphertexts_fail_closed(components: Components) -> None:
    first = tokenize_one(components, "card", CARD)
    second = tokenize_one(components, "card", {**CARD, "pan": "5555555555554444"})
    with components.engine.begin() as conn:
        blobs = dict(conn.execute(select(tokens.c.token, tokens.c.ciphertext)).all())
        conn.execute(update(tokens).where(tokens.c.token == first.token).values(ciphertext=blobs[second.token]))
        conn.execute(update(tokens).where(tokens.c.token == second.token).values(ciphertext=blobs[first.token]))
    results = components.tokens.detokenize(GATEWAY, [first.token, second.token], "payment", HERE)
    assert all(isinstance(r.error, DecryptionFailed) and r.value is None for r in results)
    assert count(components, audit_events, audit_events.c.error_code == "decryption_failed") == 2


def test_edited_metadata_fails_closed(components: Components) -> None:
    """A database insider relabelling a billing address as shipping gains nothing."""
    bill = tokenize_one(components, "address", {**SHIP_TO, "use": "billing"})
    with components.engine.begin() as conn:
        conn.execute(update(tokens).where(tokens.c.token == bill.token)
                     .values(meta='{"country": "FR", "use": "shipping"}'))
    result = components.tokens.detokenize(SHIPPING, [bill.token], "fulfillment", HERE)[0]
    assert isinstance(result.error, DecryptionFailed) and result.value is None


def test_moved_data_key_fails_closed(components: Components) -> None:
    first = tokenize_one(components, "card", CARD, subject_id="a")
    second = tokenize_one(components, "card", {**CARD, "pan": "5555555555554444"}, subject_id="b")
    with components.engine.begin() as conn:
        key_b = conn.execute(select(tokens.c.data_key_id).where(tokens.c.token == second.token)).scalar_one()
        conn.execute(update(tokens).where(tokens.c.token == first.token).values(data_key_id=key_b))
    result = components.tokens.detokenize(GATEWAY, [first.token], "payment", HERE)[0]
    assert isinstance(result.error, DecryptionFailed)


def test_every_detokenize_is_audited(components: Components) -> None:
    card = tokenize_one(components, "card", CARD, subject_id="s1")
    components.tokens.detokenize(GATEWAY, [card.token, "tok_email_" + "A" * 32, "4111111111111111"], "payment",
                                 HERE)
    with components.engine.connect() as conn:
        rows = conn.execute(select(audit_events).where(audit_events.c.action == "detokenize")
                            .order_by(audit_events.c.seq)).mappings().all()
    assert [(r["outcome"], r["token"]) for r in rows] == [
        ("allowed", card.token), ("denied", "tok_email_" + "A" * 32), ("denied", None)]
    first = rows[0]
    assert (first["actor"], first["role"], first["purpose"], first["subject_id"], first["request_id"],
            first["source"], first["user_agent"]) == ("cli_gateway", "payment_gateway", "payment", "s1", "req-1",
                                                      "127.0.0.1", "pytest")
    assert first["at"] is not None and first["key_id"] is not None


def test_tokenize_is_audited_per_item(components: Components) -> None:
    components.tokens.tokenize(CHECKOUT, [TokenRequest(kind="email", value="a@example.com"),
                                          TokenRequest(kind="email", value="not-an-email")], HERE)
    assert count(components, audit_events, audit_events.c.action == "tokenize",
                 audit_events.c.outcome == "allowed") == 1
    assert count(components, audit_events, audit_events.c.action == "tokenize",
                 audit_events.c.outcome == "denied") == 1


def _break_audit_writes(parts: Components) -> None:
    """A real database fault: a trigger that refuses every audit insert."""
    with parts.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_events "
                              "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"))
        else:
            conn.execute(text("CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$"))
            conn.execute(text("CREATE TRIGGER no_audit BEFORE INSERT ON audit_events "
                              "FOR EACH ROW EXECUTE FUNCTION no_audit()"))


def _repair_audit_writes(parts: Components) -> None:
    with parts.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER no_audit"))
        else:
            conn.execute(text("DROP TRIGGER no_audit ON audit_events"))
            conn.execute(text("DROP FUNCTION no_audit()"))


def test_audit_failure_rolls_back_the_operation(components: Components) -> None:
    cvv = tokenize_one(components, "cvv", "123")
    before = count(components, tokens)
    _break_audit_writes(components)
    try:
        with pytest.raises(VaultError) as raised:
            components.tokens.tokenize(CHECKOUT, [TokenRequest(kind="card", value=CARD)], HERE)
        assert raised.value.code == "audit_unavailable"
        assert count(components, tokens) == before
        with pytest.raises(VaultError):
            components.tokens.detokenize(GATEWAY, [cvv.token], "payment", HERE)
    finally:
        _repair_audit_writes(components)
    # The failed read did not consume the CVV: nothing half-done stays.
    assert read(components, GATEWAY, cvv.token, "payment") == "123"


def test_no_plaintext_in_tables(components: Components) -> None:
    tokenize_one(components, "card", CARD, subject_id="s")
    tokenize_one(components, "email", "secret.person@example.com", deterministic=True)
    with components.engine.connect() as conn:
        dump = []
        for table in ("tokens", "data_keys", "domain_keys", "audit_events", "clients"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                dump.append(repr(tuple(row)))
    blob = "\n".join(dump)
    for needle in ("4111111111111111", "1111 1111", "secret.person", "Ada Lovelace"):
        assert needle not in blob
