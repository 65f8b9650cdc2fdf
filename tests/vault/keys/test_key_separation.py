"""Key separation (issue #15 item 3): a domain key serves only its own purpose and id.

The insider copies a wrapped domain key under a new id, or renames a row's purpose,
and then names that key where another purpose is expected (an audit event's
`mac_key_id`). Every such use fails closed, in a cold process as in a warm one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select, update

from api.wiring import Components
from tests.vault.tokens.test_service import CARD, GATEWAY, read, tokenize_one
from vault.audit.facts import witnessed_generation
from vault.audit.trail import Actor, AuditEvent, AuditTrail, Origin, mac_of
from vault.errors import ConfigurationError, DecryptionFailed, IntegrityFailure
from vault.keys.hierarchy import KeyHierarchy, _header
from vault.keys.provider import KEY_BYTES
from vault.secret import Secret
from vault.storage.schema import audit_events, data_keys, domain_keys


def _key_row(parts: Components, purpose: str) -> dict[str, object]:
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(domain_keys).where(domain_keys.c.active_for == purpose)).mappings().one())


def _copy_as(parts: Components, source: dict[str, object], new_id: str, purpose: str) -> None:
    with parts.engine.begin() as conn:
        conn.execute(insert(domain_keys).values(id=new_id, purpose=purpose, active_for=None,
                                                wrapped=source["wrapped"], kek_version=source["kek_version"],
                                                created_at=datetime.now(UTC)))


def test_a_copied_wrapped_key_does_not_open_under_another_id_or_purpose(components: Components) -> None:
    auth = _key_row(components, "auth")
    _copy_as(components, auth, "dom_forged_audit", "audit")
    _copy_as(components, auth, "dom_forged_auth", "auth")
    cold = KeyHierarchy(components.provider)
    with components.engine.connect() as conn:
        assert cold.hmac_key_by_id(conn, str(auth["id"]), "auth") is not None  # the genuine row still opens
        for key_id, purpose in (("dom_forged_audit", "audit"), ("dom_forged_auth", "auth")):
            with pytest.raises(DecryptionFailed):
                cold.hmac_key_by_id(conn, key_id, purpose)


def test_a_key_asked_for_another_purpose_is_refused_cold_and_warm(components: Components) -> None:
    auth_id = str(_key_row(components, "auth")["id"])
    with components.engine.connect() as conn:
        components.keys.hmac_key(conn, "auth")  # warm: the auth key is cached in this process
        with pytest.raises(DecryptionFailed):
            components.keys.hmac_key_by_id(conn, auth_id, "audit")
        with pytest.raises(DecryptionFailed):
            components.keys.domain_cipher(conn, auth_id, "data")


def test_a_row_renamed_to_another_purpose_does_not_open(components: Components) -> None:
    index = _key_row(components, "index")
    with components.engine.begin() as conn:
        conn.execute(update(domain_keys).where(domain_keys.c.id == index["id"]).values(purpose="audit"))
    with components.engine.connect() as conn, pytest.raises(DecryptionFailed):
        KeyHierarchy(components.provider).hmac_key_by_id(conn, str(index["id"]), "audit")


def test_audit_verify_rejects_an_event_signed_with_a_copied_auth_key(components: Components) -> None:
    """The issue's forgery: a copied `auth` key named as an event's `mac_key_id` must not verify."""
    auth = _key_row(components, "auth")
    _copy_as(components, auth, "dom_forged_audit", "audit")
    with components.engine.begin() as conn:
        components.trail.record(conn, [AuditEvent(at=datetime.now(UTC), actor="host", role="host",
                                                  action="genuine", outcome="allowed")])
        head = conn.execute(select(audit_events).order_by(audit_events.c.seq.desc())).mappings().first()
        assert head is not None
        auth_key = components.keys.hmac_key_by_id(conn, str(auth["id"]), "auth").expose()
        forged = AuditEvent(at=datetime.now(UTC), actor="op_victim", role="admin", action="forged",
                            outcome="allowed").row()
        forged.update(writer=head["writer"], chain_seq=head["chain_seq"] + 1, mac_key_id="dom_forged_audit",
                      prev_mac=bytes(head["mac"]))
        forged["mac"] = mac_of(auth_key, bytes(head["mac"]), forged)
        conn.execute(insert(audit_events), [forged])
    verifier = AuditTrail(KeyHierarchy(components.provider))
    with components.engine.connect() as conn:
        report = verifier.verify(conn)
    # Refused either way: the copy's wrapping names `auth` (unreadable as an audit key), or its row is not `audit`.
    assert report.broken is not None and report.broken.reason in ("audit key unreadable", "MAC key is not an audit key")


def test_data_keys_open_only_for_the_purposes_asked(components: Components) -> None:
    record = tokenize_one(components, "card", CARD)
    with components.engine.connect() as conn:
        row = dict(conn.execute(select(data_keys)).mappings().first() or {})
        with pytest.raises(DecryptionFailed):
            KeyHierarchy(components.provider).open_data_keys(conn, [row], ("totp",))
    assert read(components, GATEWAY, record.token, "payment")["pan"] == "4111111111111111"


def _as_format(parts: Components, header: Callable[[str, str], bytes]) -> int:
    """Rewrap every domain key as an older release wrote it: `header(purpose, id)` + the bare key."""
    with parts.engine.begin() as conn:
        rows = conn.execute(select(domain_keys.c.id, domain_keys.c.purpose, domain_keys.c.wrapped)).all()
        for row in rows:
            plain = parts.provider.unwrap([row.wrapped])[0]
            assert plain is not None
            older = Secret(header(row.purpose, row.id) + plain.expose()[-KEY_BYTES:])
            conn.execute(update(domain_keys).where(domain_keys.c.id == row.id)
                         .values(wrapped=parts.provider.wrap([older])[0]))
    return len(rows)


def test_upgrade_binds_legacy_wrappings_and_refuses_a_copied_key(components: Components) -> None:
    """Format-1 rows (bare key under the KEK) open only after `tokenvault init` rebinds them."""
    existing = _as_format(components, lambda _purpose, _id: b"")  # a vault of the release before key binding
    material = Secret(b"\x07" * 32)
    legacy = components.provider.wrap([material])[0]
    with components.engine.begin() as conn:
        conn.execute(insert(domain_keys).values(id="dom_legacy", purpose="audit", active_for=None, wrapped=legacy,
                                                kek_version=1, created_at=datetime.now(UTC)))
    cold = KeyHierarchy(components.provider)
    with components.engine.connect() as conn, pytest.raises(DecryptionFailed):
        cold.hmac_key_by_id(conn, "dom_legacy", "audit")  # not before the upgrade step
    with components.engine.begin() as conn:
        assert components.keys.bind_legacy_wrappings(conn) == existing + 1
        assert components.keys.bind_legacy_wrappings(conn) == 0  # idempotent
    with components.engine.connect() as conn:
        assert KeyHierarchy(components.provider).hmac_key_by_id(conn, "dom_legacy", "audit").expose() == b"\x07" * 32
    with components.engine.begin() as conn:  # the same legacy blob copied under a second id before the upgrade
        conn.execute(insert(domain_keys).values(id="dom_legacy_copy", purpose="auth", active_for=None,
                                                wrapped=legacy, kek_version=1, created_at=datetime.now(UTC)))
    with components.engine.begin() as conn, pytest.raises(ConfigurationError, match="same key"):
        components.keys.bind_legacy_wrappings(conn)


def test_an_upgraded_vault_refuses_older_wrappings_written_back(components: Components) -> None:
    """Blobs saved before the upgrade and written back (active_for moved) must not be rebound by a later init."""
    retired = _active_id(components, "data")
    with components.engine.begin() as conn:
        components.keys.rotate_domain_key(conn, "data")
    _as_format(components, _header)  # format 2: what the insider saved before the upgrade, say
    with components.engine.begin() as conn:  # one row already upgraded: here, a fresh domain key of a new purpose
        conn.execute(update(domain_keys).where(domain_keys.c.active_for == "data").values(active_for=None))
        conn.execute(update(domain_keys).where(domain_keys.c.id == retired).values(active_for="data"))
        components.keys.rotate_domain_key(conn, "relay")
    with components.engine.begin() as conn, pytest.raises(ConfigurationError, match="before the upgrade"):
        components.keys.bind_legacy_wrappings(conn)


def _active_id(parts: Components, purpose: str) -> str:
    return str(_key_row(parts, purpose)["id"])


def test_active_for_moved_onto_a_retired_key_is_refused(components: Components) -> None:
    """`active_for` is clear: the newest generation, inside each wrapping, decides which key is active."""
    old = _active_id(components, "data")
    with components.engine.begin() as conn:
        new = components.keys.rotate_domain_key(conn, "data")
        assert KeyHierarchy(components.provider).new_data_key(conn, "data", None).row["domain_key_id"] == new
    with components.engine.begin() as conn:  # the insider's move: new data keys under the retired key
        conn.execute(update(domain_keys).where(domain_keys.c.id == new).values(active_for=None))
        conn.execute(update(domain_keys).where(domain_keys.c.id == old).values(active_for="data", retired_at=None))
    with components.engine.connect() as conn, pytest.raises(IntegrityFailure):
        KeyHierarchy(components.provider).new_data_key(conn, "data", None)
    with components.engine.begin() as conn:  # put back; a copy of the new key's wrapping opens as nothing
        conn.execute(update(domain_keys).where(domain_keys.c.id == old).values(active_for=None))
        conn.execute(update(domain_keys).where(domain_keys.c.id == new).values(active_for="data"))
    with components.engine.connect() as conn:
        copied = dict(conn.execute(select(domain_keys).where(domain_keys.c.id == new)).mappings().one())
    _copy_as(components, copied, "dom_copy_of_new", "data")
    with components.engine.connect() as conn:
        assert KeyHierarchy(components.provider).new_data_key(conn, "data", None).row["domain_key_id"] == new


def test_keys_without_a_generation_serve_only_after_the_upgrade_step(components: Components) -> None:
    """Format 2 (the previous release): `tokenvault init` makes each active key generation 1, once."""
    with components.engine.begin() as conn:
        components.keys.rotate_domain_key(conn, "data")  # a retired key too
    rows = _as_format(components, _header)
    with components.engine.connect() as conn, pytest.raises(IntegrityFailure):
        KeyHierarchy(components.provider).new_data_key(conn, "data", None)  # generation 0 is never trusted
    with components.engine.begin() as conn:
        assert components.keys.bind_legacy_wrappings(conn) == rows
        assert components.keys.bind_legacy_wrappings(conn) == 0  # idempotent
    active = _active_id(components, "data")
    with components.engine.begin() as conn:
        cold = KeyHierarchy(components.provider)
        assert cold.new_data_key(conn, "data", None).row["domain_key_id"] == active
        rotated = cold.rotate_domain_key(conn, "data")  # generation 2
    with components.engine.connect() as conn:
        assert KeyHierarchy(components.provider).new_data_key(conn, "data", None).row["domain_key_id"] == rotated


def _witnessing(parts: Components) -> KeyHierarchy:
    """A cold process's hierarchy, wired to the trail's witnessed generations as `api.wiring` does."""
    cold = KeyHierarchy(parts.provider)
    cold.witnessed = lambda conn, purpose: witnessed_generation(conn, cold, purpose)
    return cold


@pytest.mark.parametrize("hide", ["rename its purpose", "overwrite its wrapping"])
def test_hiding_the_newest_key_does_not_reactivate_the_retired_one(components: Components, hide: str) -> None:
    """The rotation's audit event names the new generation: a newer key hidden for a while is not forgotten."""
    old = _active_id(components, "data")
    components.lifecycle.start_rotation(Actor(id="op_admin", role="admin"), Origin(), domain_keys_too=True)
    new = _active_id(components, "data")
    with components.engine.begin() as conn:
        wrapped = conn.execute(select(domain_keys.c.wrapped).where(domain_keys.c.id == old)).scalar_one()
        hidden = {"purpose": "cvv"} if hide == "rename its purpose" else {"wrapped": wrapped}
        conn.execute(update(domain_keys).where(domain_keys.c.id == new).values(active_for=None, **hidden))
        conn.execute(update(domain_keys).where(domain_keys.c.id == old).values(active_for="data", retired_at=None))
    with components.engine.connect() as conn, pytest.raises(IntegrityFailure):
        _witnessing(components).new_data_key(conn, "data", None)
