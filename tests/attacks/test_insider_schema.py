"""The insider suite generated from the schema (issue #15): every table and column has a decision.

`DECISIONS` says, for every column of every table in `vault.storage.schema.metadata`, how an
edit of it is contained: `mac` (covered by the row MAC, vault.keys.row_mac.MACED), `aead`
(ciphertext, wrapped key, or a clear column bound into a ciphertext's associated data or a
key wrapping: tests/attacks/test_insider.py), `chain` (audit events and archives: the MAC
chain and anchored checkpoints, tests/vault/audit), or `open: <why>` for what is not
protected yet, which README "Insider with the database" lists. A table or column added
without a decision fails `test_every_column_has_a_decision`.

For every MACed table, generated attacks run on SQLite and PostgreSQL against the code path
that relies on the row: change each column, copy each column from another row, swap two
rows, delete the row. Access never widens, and each change is denied with IntegrityFailure
and audited as an `integrity` event. Restores of older copies are in
tests/vault/access/test_consistency.py (found by the sweep, not at request time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Table, delete, select, update

from api.wiring import Components
from tests.conftest import Clock
from tests.support.operators import Operator, make_operator
from tests.vault.access.test_approvals import request_disable, step_up
from vault.access.clients import ClientRegistry
from vault.access.consistency import sweep
from vault.audit.trail import Actor, Origin
from vault.errors import Conflict, IntegrityFailure, NotFound, Unauthenticated, VaultError
from vault.keys.row_mac import MACED, ROW_MAC, RowMacs
from vault.secret import Secret
from vault.storage.schema import (
    approvals,
    audit_events,
    clients,
    consents,
    disclosures,
    holds,
    metadata,
    operator_sessions,
    operators,
    subjects,
    totp_uses,
)
from vault.tokens.records import TokenRecord, TokenRequest

MAC, AEAD, CHAIN = "mac", "aead", "chain"
_WHY_KEY_ROW = "open: key rows are bound by their wrapping (purpose and id, AAD); lifecycle columns are not MACed"

DECISIONS: dict[str, dict[str, str]] = {
    "domain_keys": {"id": AEAD, "purpose": AEAD, "wrapped": AEAD, "active_for": AEAD,
                    "kek_version": "open: informational; the version is read from `wrapped` itself",
                    "created_at": _WHY_KEY_ROW, "retired_at": _WHY_KEY_ROW},
    "data_keys": {"id": AEAD, "domain_key_id": AEAD, "subject_id": AEAD, "purpose": AEAD, "wrapped": AEAD,
                  "created_at": "harmless: informational only"},
    "tokens": {"token": AEAD, "kind": AEAD, "subject_id": AEAD, "data_key_id": AEAD, "ciphertext": AEAD,
               "lookup": "aead: a hit is opened and compared before it is returned (test_insider_integrity)",
               "meta": AEAD, "expires_at": AEAD, "created_at": "harmless: informational only",
               "last_used_at": "open: an edit can delay or hasten the 13-month purge of an unused card"},
    "clients": {**{c: MAC for c in ("id", *MACED["clients"])}, ROW_MAC: MAC},
    "operators": {**{c: MAC for c in ("id", *MACED["operators"])}, ROW_MAC: MAC},
    "operator_sessions": {**{c: MAC for c in ("id", *MACED["operator_sessions"])}, ROW_MAC: MAC},
    "approvals": {**{c: MAC for c in ("id", *MACED["approvals"])}, ROW_MAC: MAC},
    "audit_events": {c.name: CHAIN for c in audit_events.columns},
    "audit_archives": {"writer": CHAIN, "chain_seq": CHAIN, "mac": CHAIN, "archive": CHAIN, "last_seq": CHAIN,
                       "mac_key_id": CHAIN, "record_mac": CHAIN, "archived_at": "harmless: informational only"},
    # Issue #16's audit anchoring: decided by that issue's design (chain, anchors outside the database).
    "audit_sequence": {c: CHAIN for c in ("name", "next_seq")},
    "audit_signing_keys": {"id": AEAD, "wrapped": AEAD, "created_at": "harmless: informational only"},
    "audit_sink_heads": {c: CHAIN for c in ("sink", "n", "hash", "at")},
    "audit_verify_jobs": {c: "open: a verification job's record (issue #16), not an access decision"
                          for c in ("id", "status", "total", "done", "resume", "result", "requested_by",
                                    "started_at", "updated_at", "finished_at")},
    "totp_uses": {"operator_id": "open: deleting a used step lets that one code be replayed within its 90 s",
                  "step": "open: as operator_id", "used_at": "harmless: informational only"},
    "subjects": {**{c: MAC for c in ("id", *MACED["subjects"])}, ROW_MAC: MAC},
    "consents": {**{c: MAC for c in ("id", *MACED["consents"])}, ROW_MAC: MAC},
    "holds": {**{c: MAC for c in ("id", *MACED["holds"])}, ROW_MAC: MAC},
    "privacy_requests": {c: "open: not MACed; a request's record, not an access decision"
                         for c in ("id", "subject_id", "right", "received_at", "due_at", "status", "outcome",
                                   "closed_at", "handled_by")},
    "retained_records": {c: "open: not MACed; retention dates can be edited"
                         for c in ("token", "subject_id", "kind", "meta", "reason", "retain_until", "created_at")},
    "disclosures": {**{c: MAC for c in ("id", *MACED["disclosures"])}, ROW_MAC: MAC},
    "relay_routes": {"sealed": AEAD, "data_key_id": AEAD,
                     **{c: "open: relay route rows (issue #20) are not MACed yet; `state`/`approved_by` decide use"
                        for c in ("name", "version", "state", "proposed_by", "proposed_at", "approved_by")}},
    # Issue #18's key epoch: an edit may only make a key job wait its cache window (tests/vault/keys/test_key_epoch.py).
    "key_epoch": {c: "harmless: any change makes every process drop its cached keys; lowered, jobs wait"
                  for c in ("name", "epoch", "changed_at")},
    "key_epoch_acks": {c: "harmless: HMACed by vault.keys.epoch; an edited row sends key jobs to the cache window"
                       for c in ("worker", "epoch", "seen_at", "row_mac")},
    "key_jobs": {c: "open: key-job rows are not MACed yet (a job can be marked done early)"
                 for c in ("id", "kind", "status", "params", "phase", "total", "done", "started_at", "updated_at",
                           "finished_at", "error", "requested_by", "lease_owner", "lease_until")},
}


def test_every_column_has_a_decision() -> None:
    schema = {table.name: {column.name for column in table.columns} for table in metadata.sorted_tables}
    decided = {table: set(columns) for table, columns in DECISIONS.items()}
    assert decided == schema, "a table or column was added or removed without an insider decision"
    for table, columns in DECISIONS.items():
        for column, decision in columns.items():
            assert decision in (MAC, AEAD, CHAIN) or decision.startswith(("open: ", "harmless: ", "aead: ")), \
                (table, column)


def test_the_mac_decisions_are_the_row_mac_declaration() -> None:
    maced = {t: {c for c, d in cols.items() if d == MAC} for t, cols in DECISIONS.items()}
    assert {t: cs for t, cs in maced.items() if cs} == {t: {"id", ROW_MAC, *cs} for t, cs in MACED.items()}


# -- generated attacks on MACed tables ---------------------------------------------------------------


@dataclass
class Scene:
    """Two rows of a table and a way to use the first one as the vault would."""

    table: Table
    victim: str
    other: str
    use: Callable[[], Any]


def _clients(parts: Components, clock: Clock) -> Scene:
    gateway_id, gateway_key = parts.clients.create("gateway", "payment_gateway")
    shipping_id, _ = parts.clients.create("shipping", "shipping")
    parts.clients.rotate(shipping_id, 3600)  # so previous_key_* hold values to copy
    fresh = ClientRegistry(parts.engine, parts.keys, parts.policy, parts.trail, cache_seconds=0, clock=clock)
    return Scene(clients, gateway_id, shipping_id, lambda: fresh.authenticate(gateway_key, Origin()))


def _operators(parts: Components, clock: Clock) -> Scene:
    alice = make_operator(parts, "alice", "auditor")
    bob = make_operator(parts, "bob", "admin", password="another long passphrase here")
    return Scene(operators, alice.id, bob.id, lambda: _login(parts, clock, alice))


def _login(parts: Components, clock: Clock, who: Operator) -> Any:
    clock.advance(30)  # a fresh TOTP step each time
    return parts.operators.login(who.username, Secret(who.password), Secret(who.code(clock.now)), Origin())


def _sessions(parts: Components, clock: Clock) -> Scene:
    alice = make_operator(parts, "alice", "auditor")
    bob = make_operator(parts, "bob", "admin")
    token = _login(parts, clock, alice).session.token
    _login(parts, clock, bob)
    with parts.engine.connect() as conn:
        ids = dict(conn.execute(select(operator_sessions.c.operator_id, operator_sessions.c.id)).all())
    return Scene(operator_sessions, ids[alice.id], ids[bob.id], lambda: parts.operators.authenticate(token, Origin()))


def _approvals(parts: Components, clock: Clock) -> Scene:
    team = {n: make_operator(parts, n, "admin") for n in ("alice", "bob", "carol", "mallory", "trent")}
    victim = request_disable(parts, clock, team["alice"], team["mallory"])
    other = request_disable(parts, clock, team["bob"], team["trent"])
    return Scene(approvals, victim, other,
                 lambda: parts.approvals.approve(step_up(parts, clock, team["carol"], 1), victim, Origin()))


OFFICER = Actor(id="op_officer", role="privacy_officer")
SUPPORT = Actor(id="cli_support", role="support")
MARKETING = Actor(id="cli_marketing", role="marketing")


def _email(parts: Components, subject_id: str) -> str:
    result = parts.tokens.tokenize(Actor(id="cli_checkout", role="checkout"),
                                   [TokenRequest(kind="email", value=f"{subject_id}@example.com",
                                                 subject_id=subject_id)], Origin())[0]
    assert isinstance(result, TokenRecord)
    return result.token


def _read(parts: Components, actor: Actor, token: str, purpose: str) -> Any:
    item = parts.tokens.detokenize(actor, [token], purpose, Origin())[0]
    if item.error is not None:
        raise item.error
    return item.value


def _subjects(parts: Components, clock: Clock) -> Scene:
    token = _email(parts, "cust-a")
    _email(parts, "cust-b")
    parts.privacy.restrict(OFFICER, "cust-a", True, Origin())
    parts.privacy.mark_minor(OFFICER, "cust-b", Origin())
    return Scene(subjects, "cust-a", "cust-b", lambda: _read(parts, SUPPORT, token, "support"))


def _consents(parts: Components, clock: Clock) -> Scene:
    token = _email(parts, "cust-a")
    _email(parts, "cust-b")
    parts.privacy.set_consents(OFFICER, "cust-a", {"marketing": False}, "web", Origin())
    clock.advance(1)
    parts.privacy.set_consents(OFFICER, "cust-b", {"profiling": True}, "app", Origin())
    with parts.engine.connect() as conn:
        ids = dict(conn.execute(select(consents.c.subject_id, consents.c.id)).all())
    return Scene(consents, ids["cust-a"], ids["cust-b"], lambda: _read(parts, MARKETING, token, "marketing"))


def _holds(parts: Components, clock: Clock) -> Scene:
    _email(parts, "cust-a")
    _email(parts, "cust-b")
    victim = parts.privacy.add_hold(OFFICER, "cust-a", "tax audit", clock() + timedelta(days=30), Origin())["id"]
    clock.advance(1)
    other = parts.privacy.add_hold(OFFICER, "cust-b", "court order", clock() + timedelta(days=60), Origin())["id"]
    with parts.engine.begin() as conn:  # as a second officer's approval of `release_hold` runs it
        parts.privacy.run_release_hold(conn, OFFICER, {"subject_id": "cust-b", "hold_id": other}, Origin())
    return Scene(holds, victim, other, lambda: parts.privacy.erase(OFFICER, "cust-a", Origin()))


def _disclosures(parts: Components, clock: Clock) -> Scene:
    first, second = Actor(id="op_po_a", role="privacy_officer"), Actor(id="op_po_b", role="privacy_officer")
    _email(parts, "cust-a")
    _email(parts, "cust-b")
    victim = parts.disclosures.request(first, subject_id="cust-a", token_list=[], case_reference="case-1",
                                       authority="court", justification="order 1", origin=Origin())["id"]
    clock.advance(1)
    other = parts.disclosures.request(second, subject_id="cust-b", token_list=[], case_reference="case-2",
                                      authority="police", justification="order 2", origin=Origin())["id"]
    parts.disclosures.approve(first, other, Origin())
    return Scene(disclosures, victim, other, lambda: parts.disclosures.approve(second, victim, Origin()))


SCENES: dict[str, Callable[[Components, Clock], Scene]] = {
    "clients": _clients, "operators": _operators, "operator_sessions": _sessions, "approvals": _approvals,
    "subjects": _subjects, "consents": _consents, "holds": _holds, "disclosures": _disclosures,
}
# Columns the vault finds a row by: changed, the row is not found where the vault looks. For clients,
# operators, sessions and requests that is no access at all; for rows that limit access by existing
# (restrictions, opt-outs, holds) it widens access until the sweep (vault/access/consistency.py) finds it,
# as deleting them does. Either way the test demands: denied, or found by the sweep.
FOUND_BY = {"clients": {"key_hash"}, "operators": {"username"}, "operator_sessions": {"token_hash"},
            "approvals": {"id"}, "subjects": {"id"}, "consents": {"id", "subject_id", "purpose"},
            "holds": {"id", "subject_id"}, "disclosures": {"id"}}


def test_every_maced_table_has_a_scene() -> None:
    assert set(SCENES) == set(MACED)


def _row(parts: Components, table: Table, key: str) -> dict[str, Any]:
    with parts.engine.connect() as conn:
        return dict(conn.execute(select(table).where(table.c.id == key)).mappings().one())


def _changed(table: Table, column: str, value: Any, clock: Clock) -> Any:
    """A different value of the column's type."""
    if column == "id" and isinstance(value, int):
        return value + 1000  # clear of the other rows' ids
    if value is None:
        python_type = table.c[column].type.python_type
        return {str: "x", bytes: b"\x01" * 32, int: 1}.get(python_type, clock.now)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes | memoryview):
        raw = bytearray(bytes(value))
        raw[0] ^= 1
        return bytes(raw)
    if isinstance(value, str):
        return value[:-1] + ("x" if value[-1:] != "x" else "y")
    return value + timedelta(days=1)


def _integrity_events(parts: Components) -> int:
    with parts.engine.connect() as conn:
        return len(conn.execute(select(audit_events.c.seq).where(audit_events.c.action == "integrity")).all())


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for table, columns in MACED.items():
        out += [(table, column, "change") for column in ("id", *columns, ROW_MAC)]
        out += [(table, column, "copy") for column in (*columns, ROW_MAC)]
        out += [(table, "*", "swap"), (table, "*", "delete")]
    return out


def _unique(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.unique]


def _tamper(parts: Components, scene: Scene, column: str, attack: str, clock: Clock) -> None:
    table = scene.table
    victim, other = _row(parts, table, scene.victim), _row(parts, table, scene.other)
    with parts.engine.begin() as conn:
        def put(key: str, values: dict[str, Any]) -> None:
            assert conn.execute(update(table).where(table.c.id == key).values(**values)).rowcount == 1

        if attack == "delete":
            if table is operators:
                for dependant in (operator_sessions, totp_uses):
                    conn.execute(delete(dependant).where(dependant.c.operator_id == victim["id"]))
            conn.execute(delete(table).where(table.c.id == victim["id"]))
        elif attack == "swap":  # unique columns step aside first
            aside = {c: _changed(table, c, other[c], clock) for c in _unique(table) if other[c] is not None}
            if aside:
                put(other["id"], aside)
            put(victim["id"], {c: other[c] for c in victim if c != "id"})
            put(other["id"], {c: victim[c] for c in victim if c != "id"})
        elif attack == "copy":
            if other[column] == victim[column]:
                pytest.skip(f"{column} is the same in both rows of this scene: a copy changes nothing")
            if column in _unique(table):
                put(other["id"], {column: _changed(table, column, other[column], clock)})
            put(victim["id"], {column: other[column]})
        elif table.c[column].foreign_keys:
            put(victim["id"], {column: other[column]})  # a changed reference must still exist
        else:
            put(victim["id"], {column: _changed(table, column, victim[column], clock)})


@pytest.mark.parametrize(("table_name", "column", "attack"), _cases())
def test_insider_edit_of_a_maced_row(table_name: str, column: str, attack: str, components: Components,
                                     clock: Clock) -> None:
    scene = SCENES[table_name](components, clock)
    before = _integrity_events(components)
    _tamper(components, scene, column, attack, clock)
    try:
        outcome: Any = scene.use()
    except VaultError as error:
        outcome = error
    denied = isinstance(outcome, IntegrityFailure | NotFound | Unauthenticated | Conflict)
    if attack == "delete" or column in FOUND_BY[table_name]:
        # Not found where the vault looks: denied, or (a limiting row gone) found by the sweep.
        with components.engine.connect() as conn:
            found = [f for f in sweep(conn, RowMacs(components.keys)) if f.table == table_name]
        assert denied or found, f"{table_name}.{column} {attack} granted and not found: {outcome!r}"
        return
    assert denied, f"{table_name}.{column} {attack} granted: {outcome!r}"
    assert isinstance(outcome, IntegrityFailure), f"{table_name}.{column} {attack}: {outcome!r}"
    assert _integrity_events(components) == before + 1
