"""Concurrency harness: two vault instances on one database, every mutating operation at once.

Each round runs, from threads spread over both instances, tokenize (plain, under a
subject, deterministic), correct, delete (twice at once), erase, mark a minor, hold and
release, CVV reads (many readers), purge on both, a re-encrypt job and a rotation job,
disclosure approve and collect (many at once), and the access changes of
tests/support/access_round.py: step-ups, dual-control approvals, transfer export, operator
disable/enable, client rotate/revoke/suspend/resume and KEK retirement. Then it checks the
invariants of issue #17 against what was acknowledged (and access_round.py's own):

- every acknowledged token reads back with its acknowledged value, unless an acknowledged
  operation (delete, erase, correction) removed or changed it;
- read-once values (CVVs, disclosures) were delivered once, double deletes acknowledged once;
- nothing half-written (no orphan per-record key, no token of an erasure that came after it);
- the audit trail verifies and holds exactly one event per item.

Used by tests/e2e/test_concurrency.py (bounded) and bench/concurrency_soak.py (long).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, select

from api.settings import Settings
from api.wiring import Components, build
from tests.support.access_round import AccessRound
from tests.support.cards import CHECKOUT, GATEWAY, HERE, luhn_pan
from vault.access.operators import StepUp
from vault.audit.trail import Actor
from vault.errors import VaultError
from vault.keys.hierarchy import RECORD_PURPOSES
from vault.storage.schema import audit_events, data_keys, domain_keys, tokens
from vault.tokens.records import TokenRecord, TokenRequest

OFFICER_1 = Actor(id="officer-1", role="privacy_officer")
OFFICER_2 = Actor(id="officer-2", role="privacy_officer")
ADMIN = Actor(id="admin-1", role="admin")


def two_instances(settings: Settings) -> tuple[Components, Components]:
    """Two independent vaults (own engine, pool, caches) on the same database and key provider."""
    first = build(settings)
    assert hasattr(first.provider, "initialise")
    first.provider.initialise()
    with first.engine.begin() as conn:
        first.keys.ensure_domain_keys(conn)
    return first, build(settings)


@dataclass
class Ack:
    token: str
    value: Any
    subject: str | None
    started: float
    ended: float


@dataclass
class Round:
    number: int
    acks: list[Ack] = field(default_factory=list)
    corrected: dict[str, Any] = field(default_factory=dict)  # token -> last acknowledged value
    history: dict[str, list[Any]] = field(default_factory=dict)  # token -> every acknowledged correction
    doubtful: dict[str, list[Any]] = field(default_factory=dict)  # token -> values of failed corrections
    deleted: Counter[str] = field(default_factory=Counter)
    erasures: dict[str, tuple[float, float]] = field(default_factory=dict)  # subject -> (start, end) if acknowledged
    cvvs: dict[str, str] = field(default_factory=dict)
    cvv_reads: Counter[str] = field(default_factory=Counter)
    disclosures: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    access: AccessRound | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _card(n: int) -> dict[str, Any]:
    return {"pan": luhn_pan(n), "exp_month": 1 + n % 12, "exp_year": 2099}


class Harness:
    def __init__(self, first: Components, second: Components, *, seconds: float = 6.0, seed: int = 17) -> None:
        self.pair = (first, second)
        self.seconds = seconds
        self.random = random.Random(seed)
        self.serial = 0

    def _next(self) -> int:
        self.serial += 1
        return self.serial

    def _vault(self, index: int) -> Components:
        return self.pair[index % 2]

    # -- one round ------------------------------------------------------------------------

    def run_round(self, number: int) -> Round:
        state = Round(number)
        subjects = [f"r{number}-s{i}" for i in range(4)]
        erased, minor, held = f"r{number}-erased", f"r{number}-minor", f"r{number}-held"
        shared = [*subjects, erased, minor, held]
        a, b = self.pair
        base = 10_000_000 * number
        # Before the race: tokens to correct and delete, CVVs to read, a disclosure to collect.
        to_correct = self._tokenize(a, state, [(shared[i % len(subjects)], "card", _card(base + i)) for i in range(4)])
        to_delete = self._tokenize(b, state, [(None, "card", _card(base + 100 + i)) for i in range(6)])
        state.cvvs = {t.token: t.value for t in self._tokenize(a, state, [
            (subjects[i % 4], "cvv", f"{100 + i}") for i in range(8)])}
        self._tokenize(a, state, [(s, "email", f"{s}@example.com") for s in shared])
        disclosure = a.disclosures.request(OFFICER_1, subject_id=subjects[0], token_list=[], case_reference="c",
                                           authority="court", justification="order", origin=HERE)["id"]
        with b.engine.connect() as conn:
            compromised = b.keys.active_domain_key_id(conn, "data")
        access = state.access = AccessRound(self.pair, number, subjects[1])

        stop = threading.Event()
        deadline = time.monotonic() + self.seconds

        def tokenizer(index: int) -> None:
            vault, n = self._vault(index), base + 1_000_000 * (index + 1)
            while not stop.is_set():
                items: list[tuple[str | None, str, Any]] = []
                for _ in range(8):
                    n += 1
                    roll = n % 4
                    subject = None if roll == 0 else shared[n % len(shared)]
                    items.append((subject, "card", _card(n)) if roll < 3 else (subject, "email", f"u{n}@example.com"))
                self._tokenize(vault, state, items, deterministic=index == 1 and n % 3 == 0)

        def corrector() -> None:
            month = 0
            while not stop.is_set():
                for ack in to_correct:
                    month += 1
                    value = {**ack.value, "exp_month": 1 + month % 12}
                    try:
                        self._vault(month).privacy.correct(StepUp(actor=OFFICER_1, at=datetime.now(UTC)), ack.token,
                                                           value, HERE)
                        with state.lock:
                            state.corrected[ack.token] = value
                            state.history.setdefault(ack.token, []).append(value)
                    except VaultError as error:
                        if error.code not in ("not_found", "conflict"):
                            with state.lock:
                                state.doubtful.setdefault(ack.token, []).append(value)

        def deleter() -> None:
            for ack in to_delete:
                results: list[bool] = []

                def one(vault: Components, token: str = ack.token, out: list[bool] = results) -> None:
                    try:
                        vault.tokens.delete(CHECKOUT, token, HERE)
                        out.append(True)
                    except VaultError as error:
                        if error.code != "not_found":
                            with state.lock:
                                state.errors.append(f"delete {token}: {error.code}")

                self._together([lambda: one(a), lambda: one(b)])
                state.deleted[ack.token] = len(results)

        def eraser() -> None:
            time.sleep(self.seconds / 3)
            hold = b.privacy.add_hold(OFFICER_1, held, "audit", datetime.now(UTC) + timedelta(days=1), HERE)
            with contextlib.suppress(VaultError):
                a.privacy.erase(OFFICER_2, held, HERE)
                state.errors.append(f"erased {held} under a legal hold")
            with b.engine.begin() as conn:  # as a second officer's approval of `release_hold` runs it
                b.privacy.run_release_hold(conn, OFFICER_2, {"subject_id": held, "hold_id": hold["id"]}, HERE)
            started = time.monotonic()
            a.privacy.erase(OFFICER_2, erased, HERE)
            state.erasures[erased] = (started, time.monotonic())
            started = time.monotonic()
            b.privacy.mark_minor(OFFICER_2, minor, HERE)
            state.erasures[minor] = (started, time.monotonic())

        def cvv_readers() -> None:
            time.sleep(self.seconds / 4)

            def read(vault: Components) -> None:
                for item in vault.tokens.detokenize(GATEWAY, list(state.cvvs), "payment", HERE):
                    if item.error is None:
                        with state.lock:
                            state.cvv_reads[item.token] += 1
                            if item.value != state.cvvs[item.token]:
                                state.errors.append(f"cvv {item.token} read a wrong value")

            self._together([partial(read, self._vault(i)) for i in range(6)])

        def discloser() -> None:
            time.sleep(self.seconds / 5)
            approvals: list[str] = []

            def approve(vault: Components) -> None:
                with contextlib.suppress(VaultError):
                    vault.disclosures.approve(OFFICER_2, disclosure, HERE)
                    approvals.append(disclosure)

            self._together([lambda: approve(a), lambda: approve(b)])
            if len(approvals) != 1:
                state.errors.append(f"disclosure approved {len(approvals)} times")
            delivered: list[int] = []

            def collect(vault: Components) -> None:
                with contextlib.suppress(VaultError):
                    delivered.append(len(vault.disclosures.collect(OFFICER_1, disclosure, HERE)["values"]))

            self._together([partial(collect, self._vault(i)) for i in range(10)])
            state.disclosures[disclosure] = delivered

        def keys() -> None:
            b.lifecycle.run(b.lifecycle.start_reencrypt(ADMIN, compromised, HERE), batch=50)
            job = a.lifecycle.start_rotation(ADMIN, HERE, domain_keys_too=True)
            rotated = time.time()
            a.lifecycle.run(job, batch=50)
            access.retire(rotated)  # KEK versions below the new one retired, under dual control
            self._together([lambda: a.tokens.purge_expired(), lambda: b.tokens.purge_expired(),
                            lambda: a.retention.purge(ADMIN), lambda: b.retention.purge(ADMIN)])

        def access_changes() -> None:
            access.run()  # operators, clients, dual control, transfer export (tests/support/access_round.py)

        workers = [tokenizer, tokenizer, corrector, deleter, eraser, cvv_readers, discloser, keys, access_changes]
        args: list[tuple[int, ...]] = [(0,), (1,), (), (), (), (), (), (), ()]
        threads = [threading.Thread(target=self._guard(state, w), args=x) for w, x in zip(workers, args, strict=True)]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, deadline - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join()
        return state

    @staticmethod
    def _guard(state: Round, work: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                work(*args)
            except Exception as exc:  # any unexpected failure is a finding of the round
                with state.lock:
                    state.errors.append(f"{work.__name__}: {type(exc).__name__}: {exc}")
        return run

    @staticmethod
    def _together(calls: list[Callable[[], Any]]) -> None:
        barrier = threading.Barrier(len(calls))

        def go(call: Callable[[], Any]) -> None:
            barrier.wait()
            call()

        threads = [threading.Thread(target=go, args=(c,)) for c in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _tokenize(self, vault: Components, state: Round, items: list[tuple[str | None, str, Any]],
                  deterministic: bool = False) -> list[Ack]:
        requests = [TokenRequest(kind=k, value=v, subject_id=s, deterministic=deterministic and k == "card")
                    for s, k, v in items]
        started = time.monotonic()
        try:
            made = vault.tokens.tokenize(CHECKOUT, requests, HERE)
        except VaultError:
            return []
        ended = time.monotonic()
        out = [Ack(m.token, r.value, r.subject_id, started, ended)
               for r, m in zip(requests, made, strict=True) if isinstance(m, TokenRecord)]
        with state.lock:
            state.acks.extend(out)
        return out

    # -- invariants -------------------------------------------------------------------------

    def check(self, state: Round) -> list[str]:
        """Every broken invariant of the round, as text (empty when all hold)."""
        found = list(state.errors)
        a = self.pair[0]
        live: dict[str, Ack] = {}
        for ack in state.acks:
            if ack.token in state.cvvs or state.deleted.get(ack.token):
                continue
            window = state.erasures.get(ack.subject or "")
            if window is not None:
                present = self._present(ack.token)
                if ack.ended < window[0] and present:
                    found.append(f"{ack.token} of {ack.subject} survived an erasure acknowledged after it")
                if ack.started > window[1] and not present:
                    found.append(f"{ack.token} of {ack.subject} lost: tokenized after the erasure")
                continue
            live[ack.token] = ack
        tokens_list = list(live)
        for start in range(0, len(tokens_list), 500):
            chunk = tokens_list[start:start + 500]
            for item in a.tokens.detokenize(OFFICER_1, chunk, "legal", HERE):
                ack = live[item.token]
                allowed = [state.corrected.get(item.token, ack.value), *state.doubtful.get(item.token, [])]
                if item.error is not None:
                    found.append(f"{item.token} lost: {item.error.code}")
                elif item.value not in allowed:
                    found.append(f"{item.token} holds a value never acknowledged")
        for token, count in state.deleted.items():
            if count != 1:
                found.append(f"{token} deleted {count} times")
            if count and self._present(token):
                found.append(f"{token} still present after an acknowledged delete")
        for token in state.cvvs:
            if state.cvv_reads[token] != 1:
                found.append(f"cvv {token} delivered {state.cvv_reads[token]} times")
        for disclosure, delivered in state.disclosures.items():
            if len(delivered) != 1:
                found.append(f"disclosure {disclosure} delivered {len(delivered)} times")
        found += self._storage_checks(state)
        if state.access is not None:
            found += state.access.check(partial(self._acknowledged, state))
        return found

    @staticmethod
    def _acknowledged(state: Round, token: str, value: Any) -> bool:
        """Whether `value` was acknowledged for `token` at some time (tokenized, corrected, or in doubt)."""
        values = [ack.value for ack in state.acks if ack.token == token]
        return value in values + state.history.get(token, []) + state.doubtful.get(token, [])

    def _present(self, token: str) -> bool:
        with self.pair[0].engine.connect() as conn:
            return conn.execute(select(tokens.c.token).where(tokens.c.token == token)).first() is not None

    def _storage_checks(self, state: Round) -> list[str]:
        found = []
        a = self.pair[0]
        with a.engine.connect() as conn:
            orphans = conn.execute(select(func.count()).select_from(data_keys).where(
                data_keys.c.subject_id.is_(None), data_keys.c.purpose.in_(RECORD_PURPOSES),  # not TOTP, relay
                ~select(tokens.c.token).where(tokens.c.data_key_id == data_keys.c.id).exists())).scalar_one()
            if orphans:
                found.append(f"{orphans} per-record data keys without a record (half-written)")
            dangling = conn.execute(select(func.count()).select_from(data_keys).where(
                ~select(domain_keys.c.id).where(domain_keys.c.id == data_keys.c.domain_key_id).exists())).scalar_one()
            if dangling:
                found.append(f"{dangling} data keys under a missing domain key")
            verification = a.trail.verify(conn)
            if not verification.intact:
                found.append(f"audit trail broken: {verification.broken}")
            mine = [ack.token for ack in state.acks]
            counts = Counter(dict(conn.execute(
                select(audit_events.c.token, func.count()).where(
                    audit_events.c.action == "tokenize", audit_events.c.outcome == "allowed",
                    audit_events.c.token.in_(mine)).group_by(audit_events.c.token)).all()))
            acked = Counter(mine)
            for token, count in acked.items():
                if counts[token] != count:
                    found.append(f"{token}: {counts[token]} tokenize events for {count} acknowledgements")
            reads = dict(conn.execute(select(audit_events.c.token, func.count()).where(
                audit_events.c.action == "detokenize", audit_events.c.outcome == "allowed",
                audit_events.c.token.in_(list(state.cvvs))).group_by(audit_events.c.token)).all())
            for token in state.cvvs:
                if reads.get(token, 0) != state.cvv_reads[token]:
                    found.append(f"cvv {token}: {reads.get(token, 0)} read events, {state.cvv_reads[token]} reads")
            deletes = dict(conn.execute(select(audit_events.c.token, func.count()).where(
                audit_events.c.action == "delete", audit_events.c.outcome == "allowed",
                audit_events.c.token.in_(list(state.deleted))).group_by(audit_events.c.token)).all())
            for token, count in state.deleted.items():
                if deletes.get(token, 0) != count:
                    found.append(f"{token}: {deletes.get(token, 0)} delete events, {count} acknowledged")
        return found


def run(first: Components, second: Components, *, rounds: int, seconds: float,
        report: Callable[[str], None] = lambda _line: None) -> list[str]:
    """Run `rounds` rounds; every broken invariant, prefixed with its round."""
    harness = Harness(first, second, seconds=seconds)
    problems: list[str] = []
    for number in range(1, rounds + 1):
        started = time.monotonic()
        state = harness.run_round(number)
        found = harness.check(state)
        problems += [f"round {number}: {p}" for p in found]
        report(f"round {number}: {len(state.acks)} tokens acknowledged, {len(state.corrected)} corrected, "
               f"{sum(state.cvv_reads.values())} cvv reads, {len(found)} problems, "
               f"{time.monotonic() - started:.1f}s")
    return problems


__all__ = ["Harness", "Round", "run", "two_instances"]
