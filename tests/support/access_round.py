"""Access changes for the concurrency harness (tests/support/harness.py), from both instances at once.

Each round, with operators enrolled for the round (real TOTP step-ups, each code claimed once):

- one step-up code sent to both instances at once;
- dual control: a `transfer_export` request approved from both instances at once, then the
  export run under that approval from both instances at once;
- an operator (the victim) disabled under dual control (approved from both instances at once)
  while the victim logs in and approves a request of its own; then enabled again the same way;
- an API client rotated and revoked at once; another one suspended for guessing, then resumed
  under dual control while it is revoked;
- KEK retirement under dual control (approved from both instances at once) while tokenize runs,
  from the thread that rotates keys (`retire`).

Roles are set when an operator or client is created and never changed (there is no such
operation), so there is no role change to race.

`check` then holds the round to: a code accepted once; an approval executed once; an export
under one approval delivered once, sealed with acknowledged values only; an acknowledged disable
or revoke stays in force (no session or key of it works, even after a later enable or resume,
except sessions opened after the enable); nothing approved by an operator after its disable was
acknowledged; the KEK never retired below a version a domain key still needs; no data key written
under a retired domain key once every key cache has let it go.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import select

from api.wiring import Components
from tests.support.cards import GATEWAY, HERE
from tests.support.operators import Operator, make_operator
from vault.access.operators import StepUp
from vault.access.totp import STEP_SECONDS, current_step
from vault.audit.trail import Actor
from vault.errors import VaultError
from vault.privacy.transfer import TransferService, open_bundle, recipient_fingerprint
from vault.secret import Secret
from vault.storage.schema import audit_events, clients, data_keys, domain_keys
from vault.tokens.formats import card_token

__all__ = ["AccessRound", "together"]


def together(calls: list[Callable[[], Any]]) -> None:
    """Run the calls in threads released by one barrier (as close to at once as threads get)."""
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], Any]) -> None:
        barrier.wait()
        call()

    threads = [threading.Thread(target=go, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@dataclass
class Codes:
    """Hands out each operator's TOTP codes once: a step claimed is never offered again."""

    used: dict[str, set[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def code(self, operator: Operator) -> Secret[str]:
        while True:
            now = datetime.now(UTC)
            with self.lock:
                taken = self.used.setdefault(operator.id, set())
                # The next step first: it stays inside the accepted window longest.
                for step in (current_step(now) + 1, current_step(now), current_step(now) - 1):
                    if step not in taken:
                        taken.add(step)
                        return Secret(operator.code(datetime.fromtimestamp(step * STEP_SECONDS + 1, UTC)))
            time.sleep(1.0)  # all three steps of the window spent: wait for the next one


@dataclass
class Outcome:
    """What the round's access changes acknowledged (filled by `AccessRound.run`)."""

    step_up_race: int = 0
    transfer_approvals: int = 0
    exports: list[dict[str, Any]] = field(default_factory=list)
    transfer_approval: str = ""
    transfer_subject: str = ""
    disable_approvals: int = 0
    enable_approvals: int = 0
    victim: str = ""
    dead_sessions: list[Secret[str]] = field(default_factory=list)  # ended by the acknowledged disable
    victim_approvals: list[str] = field(default_factory=list)  # requests the victim approved (acknowledged)
    revoked_keys: list[Secret[str]] = field(default_factory=list)  # every key of acknowledged revocations
    revoked_ids: list[str] = field(default_factory=list)
    resume_approvals: int = 0
    retire_approvals: int = 0
    retired_below: int = 0
    rotated_at: float = 0.0  # wall clock when the domain keys' rotation was acknowledged
    errors: list[str] = field(default_factory=list)


class AccessRound:
    def __init__(self, pair: tuple[Components, Components], number: int, subject: str) -> None:
        self.pair = pair
        self.number = number
        self.subject = subject
        self.codes = Codes()
        self.out = Outcome()
        self.recipient = X25519PrivateKey.generate()

    def _operator(self, role: str) -> Operator:
        # Letters and hex only: a name of digits could pass Luhn and be refused as a card number.
        name = f"h{secrets.token_hex(4)}x{role[:2]}"
        return make_operator(self.pair[0], name, role)

    def _step_up(self, vault: Components, operator: Operator, operation: str | None = None) -> StepUp:
        return vault.operators.step_up(_actor(operator), self.codes.code(operator), HERE, operation=operation)

    def _approve_twice(self, approver_a: Operator, approver_b: Operator, approval_id: str) -> int:
        """Two approvals of one request, one per instance, at once; how many were acknowledged."""
        proofs = [self._step_up(self.pair[0], approver_a), self._step_up(self.pair[1], approver_b)]
        done: list[str] = []

        def approve(index: int) -> None:
            with contextlib.suppress(VaultError):
                done.append(self.pair[index].approvals.approve(proofs[index], approval_id, HERE).id)

        together([lambda: approve(0), lambda: approve(1)])
        return len(done)

    # -- the round ------------------------------------------------------------------------------

    def run(self) -> None:
        a, b = self.pair
        officer_a, officer_b = self._operator("privacy_officer"), self._operator("privacy_officer")
        # One code, both instances, at once: accepted once.
        code = self.codes.code(officer_a)
        accepted: list[StepUp] = []

        def step_up(vault: Components) -> None:
            with contextlib.suppress(VaultError):
                accepted.append(vault.operators.step_up(_actor(officer_a), code, HERE, operation="export"))

        together([lambda: step_up(a), lambda: step_up(b)])
        self.out.step_up_race = len(accepted)
        self._transfer(officer_a, officer_b)
        self._operators()
        self._clients()

    def _transfer(self, officer_a: Operator, officer_b: Operator) -> None:
        a, b = self.pair
        public = self.recipient.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
        filed = a.approvals.request(self._step_up(a, officer_a, "export"), "transfer_export",
                                    {"subjects": self.subject, "recipient": recipient_fingerprint(public)}, HERE)
        self.out.transfer_approval, self.out.transfer_subject = filed.id, self.subject
        self.out.transfer_approvals = self._approve_twice(officer_b, officer_b, filed.id)

        def export(vault: Components) -> None:
            service = TransferService(engine=vault.engine, policy=vault.policy, trail=vault.trail,
                                      tokens_service=vault.tokens)
            with contextlib.suppress(VaultError):
                self.out.exports.append(service.export(_actor(officer_a), [self.subject], public, filed.id, HERE))

        together([lambda: export(a), lambda: export(b)])

    def _operators(self) -> None:
        a, b = self.pair
        requester, approver_a, approver_b = (self._operator("admin") for _ in range(3))
        victim, bystander = self._operator("admin"), self._operator("auditor")
        self.out.victim = victim.id
        first = a.operators.login(victim.username, Secret(victim.password), self.codes.code(victim), HERE)
        sessions = [first.session.token]
        # A request of the victim's to approve while it is being disabled (disable the bystander).
        mine = a.approvals.request(self._step_up(a, requester), "disable_operator",
                                   {"operator_id": bystander.id}, HERE)
        disable = a.approvals.request(self._step_up(a, requester), "disable_operator",
                                      {"operator_id": victim.id}, HERE)
        victim_proof = self._step_up(b, victim)
        login_code = self.codes.code(victim)
        proofs = [self._step_up(a, approver_a), self._step_up(b, approver_b)]
        approved: list[str] = []

        def approve(index: int) -> None:
            with contextlib.suppress(VaultError):
                approved.append(self.pair[index].approvals.approve(proofs[index], disable.id, HERE).id)

        def victim_logs_in() -> None:
            with contextlib.suppress(VaultError):
                sessions.append(b.operators.login(victim.username, Secret(victim.password), login_code,
                                                  HERE).session.token)

        def victim_approves() -> None:
            with contextlib.suppress(VaultError):
                self.out.victim_approvals.append(a.approvals.approve(victim_proof, mine.id, HERE).id)

        together([lambda: approve(0), lambda: approve(1), victim_logs_in, victim_approves])
        self.out.disable_approvals = len(approved)
        if approved:
            self.out.dead_sessions = list(sessions)
        enable = a.approvals.request(self._step_up(a, requester), "enable_operator", {"operator_id": victim.id},
                                     HERE)
        self.out.enable_approvals = self._approve_twice(approver_a, approver_b, enable.id)

    def _clients(self) -> None:
        a, b = self.pair
        requester, approver_a, approver_b = (self._operator("admin") for _ in range(3))
        client_id, key = a.clients.create(f"harness-{self.number}", "checkout")
        keys = [key]
        revoked: list[bool] = []

        def rotate() -> None:
            with contextlib.suppress(VaultError):
                keys.append(a.clients.rotate(client_id, 3600))

        def revoke(vault: Components) -> None:
            with contextlib.suppress(VaultError):
                vault.clients.revoke(client_id)
                revoked.append(True)

        together([rotate, lambda: revoke(b), lambda: revoke(a)])
        if len(revoked) != 1:
            self.out.errors.append(f"client {client_id} revoked {len(revoked)} times")
        self.out.revoked_ids.append(client_id)
        self.out.revoked_keys += keys
        # A guessing client: misses on card-shaped tokens suspend it; resumed under dual control
        # while an admin revokes it on the other instance.
        guesser_id, guesser_key = a.clients.create(f"guesser-{self.number}", GATEWAY.role)
        guesser = a.clients.authenticate(guesser_key, HERE)
        for _ in range(3):
            with contextlib.suppress(VaultError):
                a.tokens.detokenize(guesser, [card_token("4111111111111111", keep_bin=False) for _ in range(10)],
                                    "payment", HERE)
        with a.engine.connect() as conn:
            suspended = conn.execute(select(clients.c.suspended_at).where(clients.c.id == guesser_id)).scalar()
        if suspended is None:
            self.out.errors.append(f"guessing client {guesser_id} was not suspended")
            return
        resume = a.approvals.request(self._step_up(a, requester), "resume_client", {"client_id": guesser_id}, HERE)
        proofs = [self._step_up(a, approver_a), self._step_up(b, approver_b)]
        resumed: list[str] = []
        revoked_guesser: list[bool] = []

        def approve(index: int) -> None:
            with contextlib.suppress(VaultError):
                resumed.append(self.pair[index].approvals.approve(proofs[index], resume.id, HERE).id)

        def revoke_guesser() -> None:
            with contextlib.suppress(VaultError):
                b.clients.revoke(guesser_id)
                revoked_guesser.append(True)

        together([lambda: approve(0), lambda: approve(1), revoke_guesser])
        self.out.resume_approvals = len(resumed)
        if revoked_guesser:
            self.out.revoked_ids.append(guesser_id)
            self.out.revoked_keys.append(guesser_key)

    def retire(self, rotated_at: float) -> None:
        """KEK retirement under dual control, after a rotation job finished (called by the keys thread)."""
        a, _b = self.pair
        self.out.rotated_at = rotated_at
        requester, approver_a, approver_b = (self._operator("admin") for _ in range(3))
        below = a.provider.info().latest_version
        filed = a.approvals.request(self._step_up(a, requester), "retire_kek", {"below": below}, HERE)
        self.out.retire_approvals = self._approve_twice(approver_a, approver_b, filed.id)
        self.out.retired_below = below

    # -- invariants -----------------------------------------------------------------------------

    def check(self, acknowledged: Callable[[str, Any], bool]) -> list[str]:
        """Broken invariants; `acknowledged(token, value)` says whether a value was acknowledged for a token."""
        out = self.out
        found = list(out.errors)
        if out.step_up_race != 1:
            found.append(f"one step-up code accepted {out.step_up_race} times")
        for name, count in (("transfer_export", out.transfer_approvals), ("disable_operator", out.disable_approvals),
                            ("enable_operator", out.enable_approvals), ("resume_client", out.resume_approvals),
                            ("retire_kek", out.retire_approvals)):
            if count != 1:
                found.append(f"{name} approval executed {count} times")
        if len(out.exports) != 1:
            found.append(f"transfer approval {out.transfer_approval} exported {len(out.exports)} times")
        for bundle in out.exports:
            _manifest, payload = open_bundle(bundle, self.recipient.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            for person in payload["subjects"]:
                for item in person["tokens"]:
                    if not acknowledged(item["token"], item["value"]):
                        found.append(f"export {out.transfer_approval} holds a value never acknowledged "
                                     f"({item['kind']} {item['token']} {item['value']!r})")
        found += self._audit_counts()
        found += self._revocations()
        found += self._keys()
        return found

    def _audit_counts(self) -> list[str]:
        found = []
        out = self.out
        with self.pair[0].engine.connect() as conn:
            def count(action: str, like: str) -> int:
                return len(conn.execute(select(audit_events.c.seq).where(
                    audit_events.c.action == action, audit_events.c.outcome == "allowed",
                    audit_events.c.detail.like(like))).all())

            exports = count("transfer_export", f"approval={out.transfer_approval} %")
            if exports != len(out.exports):
                found.append(f"{exports} transfer_export events for {len(out.exports)} exports")
            disabled = conn.execute(select(audit_events.c.seq).where(
                audit_events.c.action == "disable_operator", audit_events.c.outcome == "allowed",
                audit_events.c.detail.like(f"operator={out.victim} %"))).scalar()
            approvals = conn.execute(select(audit_events.c.seq, audit_events.c.detail).where(
                audit_events.c.action == "approve", audit_events.c.outcome == "allowed",
                audit_events.c.actor == out.victim)).all()
            for seq, detail in approvals:
                if disabled is not None and seq > disabled:
                    found.append(f"operator {out.victim} approved a request after its disable was acknowledged "
                                 f"(approve event {seq}: {detail}; disable event {disabled})")
            if len(approvals) != len(out.victim_approvals):
                found.append(f"{len(approvals)} approve events of {out.victim}, "
                             f"{len(out.victim_approvals)} acknowledged")
        return found

    def _revocations(self) -> list[str]:
        """Acknowledged disables and revocations hold on both instances, even after enable and resume."""
        found = []
        time.sleep(max(vault.settings.auth_cache_seconds for vault in self.pair) + 0.1)  # caches let go
        for vault in self.pair:
            for token in self.out.dead_sessions:
                with contextlib.suppress(VaultError):
                    vault.operators.authenticate(token, HERE)
                    found.append(f"a session of {self.out.victim} works after its acknowledged disable")
            for key in self.out.revoked_keys:
                with contextlib.suppress(VaultError):
                    actor = vault.clients.authenticate(key, HERE)
                    found.append(f"revoked client {actor.id} still authenticates")
        with self.pair[0].engine.connect() as conn:
            for client_id in self.out.revoked_ids:
                row = conn.execute(select(clients).where(clients.c.id == client_id)).mappings().first()
                if row is None or row["revoked_at"] is None:
                    found.append(f"client {client_id}: acknowledged revoke undone")
        return found

    def _keys(self) -> list[str]:
        found = []
        a = self.pair[0]
        minimum = a.provider.info().min_decryption_version
        if self.out.retired_below and minimum < self.out.retired_below:
            found.append(f"KEK minimum version {minimum}, below the acknowledged retirement {self.out.retired_below}")
        grace = timedelta(seconds=a.settings.key_cache_seconds + 1.0)
        with a.engine.connect() as conn:
            below = conn.execute(select(domain_keys.c.id).where(domain_keys.c.kek_version < minimum)).scalars().all()
            if below:
                found.append(f"{len(below)} domain keys wrapped under retired KEK versions (unreadable)")
            late = conn.execute(select(data_keys.c.id, data_keys.c.created_at, domain_keys.c.retired_at)
                                .join(domain_keys, domain_keys.c.id == data_keys.c.domain_key_id)
                                .where(domain_keys.c.retired_at.is_not(None))).all()
            for row in late:
                if row.created_at > row.retired_at + grace:
                    found.append(f"data key {row.id} written under a domain key retired "
                                 f"{(row.created_at - row.retired_at).total_seconds():.1f}s before")
        return found


def _actor(operator: Operator) -> Actor:
    return Actor(id=operator.id, role=operator.role, name=operator.username)
