"""One-way facts: what the audit trail says happened to an entity, so a row put back cannot undo it.

A row MAC catches an edited row, not a deleted one nor an older authentic copy restored
over a newer one (issue #15). Every decision that such a restore would widen therefore also
asks the trail, whose events are chained and anchored outside the database:

- a client revoked, or suspended and not resumed since; an operator disabled and not enabled
  since; a session logged out; a dual-control request approved (it ran once); a disclosure
  delivered; a subject restricted, marked a minor, opted out of a purpose, or under a legal hold
  not released; the newest approved version of a relay route.

Each such event names its entity in `audit_events.entity` (derived here from the event, so no
caller can forget it), covered by the event's MAC from scheme 3 and found through a partial
index. A row that contradicts the trail raises IntegrityFailure: the request is refused, and
audited and alerted as an integrity event by the caller's usual path. To make a restore work the
insider must also delete the event, which breaks the chain: the integrity watch
(vault.audit.watch) sees that within its interval and locks the vault. What is left (events not
yet anchored, the watch interval, events archived out of the table) is in README "Insider with
the database".

Every fact event read here is checked against its own MAC (under an audit-purpose key) before
it counts, so an event inserted or edited without the audit key (a forged release of a hold, a
resumed client, an enabled operator, a granted consent) is refused at once, not only at the
watch's next pass. A copy of an authentic event cannot move: its `seq` and `entity` are MACed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from vault.audit.chain import audit_key, event_fields, mac_of
from vault.errors import AuditKeyRefused, DecryptionFailed, IntegrityFailure
from vault.keys.hierarchy import KeyHierarchy
from vault.storage.schema import audit_events

__all__ = ["entity_of", "facts_of", "key_fingerprint", "seed_fingerprint", "SubjectFacts", "live_holds",
           "check_client", "check_operator", "check_session", "check_approval", "check_disclosure", "check_route",
           "subject_facts", "witnessed_generation", "FACT_ACTIONS"]

# action -> the `key=` in the event's detail that names the entity, and the entity's kind.
_BY_DETAIL = {
    "revoke_client": ("client", "client"), "resume_client": ("client", "client"),
    "rotate_client_key": ("client", "client"),
    # Each new TOTP seed of an operator (creation, enrolment, every re-enrolment) names its fingerprint.
    "create_operator": ("operator", "operator"), "enrol_begin": ("operator", "operator"),
    "reenrol_operator": ("operator", "operator"), "reenrol_self": ("operator", "operator"),
    "disable_operator": ("operator", "operator"), "enable_operator": ("operator", "operator"),
    "logout": ("session", "session"), "approve": ("request", "request"),
    "approve_relay_route": ("route", "route"),
}
_BY_SUBJECT = ("restrict", "mark_minor", "consent", "hold", "release_hold")
_KEY_ROTATIONS = ("rotate_keys", "erasure_epoch", "reencrypt")  # with `generations=purpose:n,...`
FACT_ACTIONS = (*_BY_DETAIL, *_BY_SUBJECT, "disclose", "suspend_client", "propose_relay_route", *_KEY_ROTATIONS)
_ENTITY_LENGTH = 160


def _field(detail: str | None, name: str) -> str | None:
    match = re.search(rf"(?:^| ){name}=(\S+)", detail or "")
    return match.group(1) if match else None


def entity_of(action: str, outcome: str, actor: str, subject_id: str | None, detail: str | None) -> str | None:
    """The entity a one-way fact is about, or None for any other event (most of them)."""
    entity: str | None = None
    if action == "suspend_client":  # written as the refused client's own event (vault.access.guessing)
        entity = f"client:{actor}"
    elif outcome != "allowed":
        return None
    elif action in _BY_DETAIL:
        key, kind = _BY_DETAIL[action]
        found = _field(detail, key)
        entity = f"{kind}:{found}" if found else None
    elif action in _BY_SUBJECT and subject_id:
        entity = f"subject:{subject_id}"
    elif action == "disclose" and detail:
        entity = f"disclosure:{detail}"
    elif action == "propose_relay_route" and _field(detail, "approved") == "True":  # the host's, approved at once
        entity = f"route:{_field(detail, 'route')}"
    elif action in _KEY_ROTATIONS and _field(detail, "generations"):
        entity = "domain_keys"
    return entity if entity is None or len(entity) <= _ENTITY_LENGTH else None


_EVENT_COLUMNS = [audit_events.c[name] for name in (*event_fields, "prev_mac", "mac")]
_FACTS = (select(*_EVENT_COLUMNS)
          .where(audit_events.c.entity.in_(bindparam("entities", expanding=True))))
_HOLD_FACTS = (select(*_EVENT_COLUMNS)
               .where(audit_events.c.entity.is_not(None), audit_events.c.action.in_(("hold", "release_hold"))))


def _authentic(conn: Connection, keys: KeyHierarchy, rows: Iterable[Any]) -> list[Mapping[str, Any]]:
    """The fact events in trail order, each only if its own MAC holds under an audit key (else IntegrityFailure).

    Scheme 3 is the first MAC to cover `entity`; an older event got it from the upgrade, derived
    from fields its MAC does cover, so it must still derive the same (a fact is never re-pointed).
    Trail order is the parsed time, then seq, sorted here rather than in SQL: `at` is under every
    scheme's MAC but `seq` only from scheme 2 on, and SQLite keeps `at` as text, which another
    spelling of the same instant (still MAC-valid) would sort anywhere.
    """
    audit_keys: dict[str, bytes] = {}
    events = []
    for row in rows:
        event = row._mapping
        try:
            key_id = str(event["mac_key_id"])
            if key_id not in audit_keys:
                audit_keys[key_id] = audit_key(keys, conn, key_id)
            expected = mac_of(audit_keys[key_id], bytes(event["prev_mac"]), event)
        except (AuditKeyRefused, DecryptionFailed, ValueError, TypeError) as exc:
            raise _refuse("audit_events") from exc
        derived = int(event["mac_scheme"] or 1) >= 3 or event["entity"] == entity_of(
            event["action"], event["outcome"], event["actor"], event["subject_id"], event["detail"])
        if not derived or not hmac.compare_digest(expected, bytes(event["mac"])):
            raise _refuse("audit_events")
        events.append(event)
    return sorted(events, key=lambda event: (event["at"], int(event["seq"])))


def facts_of(conn: Connection, keys: KeyHierarchy, entities: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Per entity, its facts in trail order as (action, detail); one indexed query, every MAC checked."""
    wanted = sorted(set(entities))
    found: dict[str, list[tuple[str, str]]] = {}
    if wanted:
        for event in _authentic(conn, keys, conn.execute(_FACTS, {"entities": wanted})):
            found.setdefault(str(event["entity"]), []).append((str(event["action"]), str(event["detail"] or "")))
    return found


def _refuse(table: str) -> IntegrityFailure:
    # Names the table only (ids stay in the trail, never in an error); "(trail)" tells it from a bad MAC.
    return IntegrityFailure(f"{table} (trail)")


def _last(facts: list[tuple[str, str]], *actions: str) -> str | None:
    return next((action for action, _ in reversed(facts) if action in actions), None)


def key_fingerprint(key_hash: bytes) -> str:
    """A short digest of a client's stored key hash, for its rotation event (names the key, reveals nothing)."""
    return hashlib.sha256(b"tokenvault-client-key|" + bytes(key_hash)).hexdigest()[:16]


def witnessed_generation(conn: Connection, keys: KeyHierarchy, purpose: str) -> int:
    """The newest generation of `purpose`'s domain key that a rotation's audit event names (0 if none)."""
    newest = 0
    for _action, detail in facts_of(conn, keys, ["domain_keys"]).get("domain_keys", []):
        for item in (_field(detail, "generations") or "").split(","):
            name, _, generation = item.partition(":")
            if name == purpose and generation.isdigit():
                newest = max(newest, int(generation))
    return newest


def check_client(conn: Connection, keys: KeyHierarchy, row: Mapping[Any, Any]) -> None:
    """A client row must be revoked, or suspended, if the trail says so, and hold the key it last rotated to."""
    facts = facts_of(conn, keys, [f"client:{row['id']}"]).get(f"client:{row['id']}", [])
    if any(action == "revoke_client" for action, _ in facts) and row["revoked_at"] is None:
        raise _refuse("clients")
    if _last(facts, "suspend_client", "resume_client") == "suspend_client" and row["suspended_at"] is None:
        raise _refuse("clients")
    rotated = [key for action, detail in facts if action == "rotate_client_key" and (key := _field(detail, "key"))]
    if rotated and rotated[-1] != key_fingerprint(row["key_hash"]):
        raise _refuse("clients")  # a pre-rotation copy: the old key would work again and the new one not


def seed_fingerprint(totp_key_id: str) -> str:
    """A short digest of the data key that seals an operator's TOTP seed (a new one at every enrolment)."""
    return hashlib.sha256(b"tokenvault-totp-seed|" + totp_key_id.encode()).hexdigest()[:16]


def check_operator(facts: Mapping[str, list[tuple[str, str]]], row: Mapping[Any, Any]) -> None:
    """An operator disabled in the trail (and not enabled since) must be disabled in its row, and hold the
    TOTP seed it was last given: a row from before a re-enrolment (old password, old authenticator) is refused."""
    history = facts.get(f"operator:{row['id']}", [])
    if _last(history, "disable_operator", "enable_operator") == "disable_operator" and row["disabled_at"] is None:
        raise _refuse("operators")
    seeds = [seed for _action, detail in history if (seed := _field(detail, "seed")) is not None]
    if seeds and seeds[-1] != seed_fingerprint(str(row["totp_key_id"])):
        raise _refuse("operators")


def check_session(facts: Mapping[str, list[tuple[str, str]]], row: Mapping[Any, Any]) -> None:
    """A session logged out in the trail is over, whatever its row says."""
    if facts.get(f"session:{row['id']}") and row["revoked_at"] is None:
        raise _refuse("operator_sessions")


def check_approval(conn: Connection, keys: KeyHierarchy, row: Mapping[Any, Any]) -> None:
    """A request the trail shows approved ran once: a row pending again is a restored copy (a replay)."""
    if row["status"] == "pending" and facts_of(conn, keys, [f"request:{row['id']}"]):
        raise _refuse("approvals")


def check_disclosure(conn: Connection, keys: KeyHierarchy, row: Mapping[Any, Any]) -> None:
    """A disclosure the trail shows delivered is never collectable again."""
    if row["status"] != "delivered" and facts_of(conn, keys, [f"disclosure:{row['id']}"]):
        raise _refuse("disclosures")


def check_route(conn: Connection, keys: KeyHierarchy, name: str, version: int | None) -> None:
    """The route's newest approved version in the trail must be the one the table serves (or a later one)."""
    newest = 0
    for _action, detail in facts_of(conn, keys, [f"route:{name}"]).get(f"route:{name}", []):
        approved = _field(detail, "v")
        if approved is not None and approved.isdigit():
            newest = max(newest, int(approved))
    if newest and (version is None or version < newest):
        raise _refuse("relay_routes")


@dataclass
class SubjectFacts:
    """What the trail says limits a subject: restricted, a minor, opted out, holds not released."""

    restricted: bool = False
    minor: bool = False
    refused: set[str] = field(default_factory=set)
    holds: set[str] = field(default_factory=set)


def subject_facts(conn: Connection, keys: KeyHierarchy, subject_ids: Iterable[str]) -> dict[str, SubjectFacts]:
    """Per subject with any recorded limitation, what the trail says (one indexed query)."""
    out: dict[str, SubjectFacts] = {}
    for entity, facts in facts_of(conn, keys, (f"subject:{s}" for s in subject_ids)).items():
        state = out.setdefault(entity.removeprefix("subject:"), SubjectFacts())
        for action, detail in facts:
            if action == "restrict":
                state.restricted = "restricted=True" in detail
            elif action == "mark_minor":
                state.minor = True
            elif action == "consent":
                for choice in detail.split(","):
                    purpose, _, granted = choice.partition("=")
                    (state.refused.discard if granted == "True" else state.refused.add)(purpose)
            elif (hold := _field(detail, "hold")) is not None:
                (state.holds.add if action == "hold" else state.holds.discard)(hold)
    return out


def live_holds(conn: Connection, keys: KeyHierarchy) -> dict[str, str]:
    """Every legal hold the trail placed and never released: hold id -> subject (for purges)."""
    live: dict[str, str] = {}
    for event in _authentic(conn, keys, conn.execute(_HOLD_FACTS)):
        hold = _field(event["detail"], "hold")
        if hold is not None:
            if event["action"] == "hold":
                live[hold] = str(event["entity"]).removeprefix("subject:")
            else:
                live.pop(hold, None)
    return live
