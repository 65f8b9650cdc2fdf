"""Authentic old events cannot be reordered to lift a fact.

An insider moves an authentic pre-0016a event (MAC scheme 1, `seq` outside the MAC) to a later
`seq`, or on SQLite re-spells its `at` so the text sorts last; decisions order an entity's facts
by the parsed, MACed time, then seq, so the old event stays where it happened. Found by reviews of
issue #15's fact checks (each of these worked before its fix).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from api.wiring import Components
from tests.attacks.test_insider_rollback import _fresh_clients, _restore, _row
from tests.conftest import Clock
from vault.audit.chain import audit_key, mac_of
from vault.audit.trail import AuditEvent, Origin
from vault.errors import IntegrityFailure
from vault.keys.row_mac import RowMacs
from vault.secret import Secret
from vault.storage.schema import audit_events, clients, domain_keys


def _event(parts: Components, action: str, entity: str) -> dict[str, Any]:
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(audit_events).where(audit_events.c.action == action,
                                                            audit_events.c.entity == entity)
                                 .order_by(audit_events.c.seq.desc())).mappings().first())


def _as_legacy_scheme_1(parts: Components, event: dict[str, Any]) -> None:
    """History set-up (not the attack): the event as a pre-0016a deployment wrote it (MAC without seq)."""
    with parts.engine.begin() as conn:
        key = audit_key(parts.keys, conn, str(event["mac_key_id"]))
        legacy = {**event, "mac_scheme": 1}
        conn.execute(update(audit_events).where(audit_events.c.seq == event["seq"]).values(
            mac_scheme=1, mac=mac_of(key, bytes(event["prev_mac"]), legacy)))


def _suspend(parts: Components, clock: Clock, client_id: str) -> None:
    with parts.engine.begin() as conn:
        RowMacs(parts.keys).update(conn, clients, client_id, {"suspended_at": clock.now})
        parts.trail.record(conn, [AuditEvent(at=clock.now, actor=client_id, role="payment_gateway",
                                             action="suspend_client", outcome="denied",
                                             error_code="guessing_suspected", detail=f"client={client_id}")])


def _resume(parts: Components, clock: Clock, client_id: str) -> None:
    with parts.engine.begin() as conn:  # what guessing.run_resume does after dual control
        RowMacs(parts.keys).update(conn, clients, client_id, {"suspended_at": None})
        parts.trail.record(conn, [AuditEvent(at=clock.now, actor="op_admin", role="admin", action="resume_client",
                                             outcome="allowed", detail=f"client={client_id}")])



def _suspended_then_resumed(parts: Components, clock: Clock) -> tuple[str, Secret[str], dict[str, Any]]:
    """A client, its row from before any suspension, then suspended and resumed: (id, API key, that row)."""
    client_id, key = parts.clients.create("gateway", "payment_gateway")
    before = _row(parts, clients, client_id)
    _suspend(parts, clock, client_id)
    _resume(parts, clock, client_id)
    return client_id, key, before


def _move_last(parts: Components, seq: int, **also: Any) -> None:
    """The attack: an authentic event given a `seq` after every other (and any other columns in `also`)."""
    with parts.engine.begin() as conn:
        top = conn.execute(select(func.max(audit_events.c.seq))).scalar_one()
        conn.execute(update(audit_events).where(audit_events.c.seq == seq).values(seq=top + 1000, **also))


def test_an_old_resume_moved_after_a_new_suspension_does_not_lift_it(components: Components, clock: Clock) -> None:
    client_id, key, before = _suspended_then_resumed(components, clock)
    _as_legacy_scheme_1(components, _event(components, "suspend_client", f"client:{client_id}"))
    resume = _event(components, "resume_client", f"client:{client_id}")
    _as_legacy_scheme_1(components, resume)
    clock.advance(60)
    _suspend(components, clock, client_id)  # today's suspension, scheme 3
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):  # the defence works while the trail is intact
        _fresh_clients(components, clock).authenticate(key, Origin())
    # The attack: move the authentic legacy resume event past the new suspension (seq is not in a scheme-1 MAC).
    _move_last(components, resume["seq"])
    with pytest.raises(IntegrityFailure):  # still suspended: the moved resume is older than the suspension
        _fresh_clients(components, clock).authenticate(key, Origin())


def test_an_old_rotation_moved_last_does_not_bring_back_a_rotated_out_key(components: Components, clock: Clock) -> None:
    registry = _fresh_clients(components, clock)
    client_id, _k1 = components.clients.create("gateway", "payment_gateway")
    k2 = registry.rotate(client_id, 0)
    legacy = _event(components, "rotate_client_key", f"client:{client_id}")
    with components.engine.begin() as conn:  # history: the rotation as a pre-0016a release wrote it
        key = audit_key(components.keys, conn, str(legacy["mac_key_id"]))
        old = {**legacy, "mac_scheme": 1, "entity": None, "detail": f"client={client_id} grace_seconds=0"}
        conn.execute(update(audit_events).where(audit_events.c.seq == legacy["seq"]).values(
            mac_scheme=1, entity=None, detail=old["detail"], mac=mac_of(key, bytes(legacy["prev_mac"]), old)))
    before = _row(components, clients, client_id)  # holds k2
    clock.advance(60)
    registry.rotate(client_id, 0)  # today: k2 -> k3, fingerprint in the trail
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(k2, Origin())
    _move_last(components, legacy["seq"], entity=f"client:{client_id}")  # the entity derives equal
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(k2, Origin())


def test_a_scheme_2_resume_moved_is_refused(components: Components, clock: Clock) -> None:
    client_id, key, before = _suspended_then_resumed(components, clock)
    resume = _event(components, "resume_client", f"client:{client_id}")
    with components.engine.begin() as conn:
        k = audit_key(components.keys, conn, str(resume["mac_key_id"]))
        legacy = {**resume, "mac_scheme": 2}
        conn.execute(update(audit_events).where(audit_events.c.seq == resume["seq"]).values(
            mac_scheme=2, mac=mac_of(k, bytes(resume["prev_mac"]), legacy)))
    clock.advance(60)
    _suspend(components, clock, client_id)
    _restore(components, clients, before)
    _move_last(components, resume["seq"])
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())


def test_a_resume_signed_with_the_row_key_is_refused(components: Components, clock: Clock) -> None:
    """A resume event MACed with a non-audit key the insider cannot have anyway; here the row key id named."""
    client_id, key, before = _suspended_then_resumed(components, clock)
    with components.engine.connect() as conn:
        row_key = str(conn.execute(select(domain_keys.c.id).where(domain_keys.c.active_for == "row")).scalar_one())
    resume = _event(components, "resume_client", f"client:{client_id}")
    with components.engine.begin() as conn:
        k = components.keys.hmac_key_by_id(conn, row_key, "row").expose()
        conn.execute(update(audit_events).where(audit_events.c.seq == resume["seq"]).values(
            mac_key_id=row_key, mac=mac_of(k, bytes(resume["prev_mac"]), {**resume, "mac_key_id": row_key})))
    clock.advance(60)
    _suspend(components, clock, client_id)
    _restore(components, clients, before)
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())


def _respelled(parts: Components, seq: int) -> None:
    """SQLite keeps `at` as text: the same instant spelled in ISO 8601's basic form parses equal (the MAC
    still holds) but sorts after every extended-form value."""
    if parts.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL stores `at` as a timestamp: an instant has one spelling there")
    with parts.engine.connect() as conn:
        raw = str(conn.execute(text("SELECT at FROM audit_events WHERE seq = :s"), {"s": seq}).scalar_one())
    date, _, moment = raw.partition(" ")
    with parts.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET at = :a WHERE seq = :s"),
                     {"a": date.replace("-", "") + "T" + moment.replace(":", ""), "s": seq})


def test_an_old_resume_respelled_to_sort_last_does_not_lift_a_new_suspension(components: Components,
                                                                               clock: Clock) -> None:
    client_id, key = components.clients.create("gateway", "payment_gateway")
    before = _row(components, clients, client_id)
    _suspend(components, clock, client_id)
    clock.advance(1)
    _resume(components, clock, client_id)
    resume = _event(components, "resume_client", f"client:{client_id}")
    clock.advance(60)
    _suspend(components, clock, client_id)
    _restore(components, clients, before)
    _respelled(components, int(resume["seq"]))
    with pytest.raises(IntegrityFailure):
        _fresh_clients(components, clock).authenticate(key, Origin())
