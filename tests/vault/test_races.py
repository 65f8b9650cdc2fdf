"""Read-modify-write races on PostgreSQL at READ COMMITTED (issue #17, findings 1 to 3).

SQLite serialises writers, so these races only show on PostgreSQL; each test also runs
on SQLite to show the fix keeps it working. Several threads use separate pooled
connections, as workers on other hosts would.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from api.wiring import Components
from tests.conftest import make_components
from tests.support.cards import CHECKOUT, GATEWAY, HERE, luhn_pan
from tests.support.operators import Operator, make_operator
from vault.access.operators import StepUp
from vault.audit.trail import Actor
from vault.errors import VaultError
from vault.keys.rotation import rekey_data_key
from vault.secret import Secret
from vault.storage.schema import data_keys
from vault.tokens.records import TokenRecord, TokenRequest

OFFICER_1 = Actor(id="officer-1", role="privacy_officer")
OFFICER_2 = Actor(id="officer-2", role="privacy_officer")
SUBJECT = "race-subject"


@pytest.fixture
def vault(tmp_path: Path, database_url: str) -> Iterator[Components]:
    parts = make_components(tmp_path / "data", database_url)
    yield parts
    parts.trail.close()
    parts.engine.dispose()


def _card(i: int) -> TokenRequest:
    return TokenRequest(kind="card", subject_id=SUBJECT,
                        value={"pan": luhn_pan(i), "exp_month": 1 + i % 12, "exp_year": 2099})


def _tokenize_while(vault: Components, other: Callable[[], None], seconds: float = 3.0) -> dict[str, str]:
    """Tokenize cards for SUBJECT from two threads while `other` runs in a loop; token -> PAN."""
    acknowledged: dict[str, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []

    def tokenize(offset: int) -> None:
        i = offset
        while not stop.is_set():
            batch = [_card(i + n) for n in range(20)]
            i += 20
            for request, made in zip(batch, vault.tokens.tokenize(CHECKOUT, batch, HERE), strict=True):
                if isinstance(made, TokenRecord):
                    acknowledged[made.token] = request.value["pan"]

    def loop() -> None:
        try:
            while not stop.is_set():
                other()
        except BaseException as exc:  # reported below
            errors.append(exc)

    vault.tokens.tokenize(CHECKOUT, [_card(0)], HERE)  # the subject's data key exists before the race
    threads = [threading.Thread(target=tokenize, args=(1_000_000 * (n + 1),)) for n in range(2)]
    threads.append(threading.Thread(target=loop))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return acknowledged


def _unreadable(vault: Components, expected: dict[str, str]) -> list[str]:
    lost = []
    items = list(expected)
    for start in range(0, len(items), 500):
        for result in vault.tokens.detokenize(GATEWAY, items[start:start + 500], "payment", HERE):
            if result.error is not None or result.value["pan"] != expected[result.token]:
                lost.append(result.token)
    return lost


def test_reencrypt_during_tokenize_for_the_same_subject_loses_nothing(vault: Components) -> None:
    def rekey() -> None:
        with vault.engine.begin() as conn:
            key_id = conn.execute(select(data_keys.c.id).where(data_keys.c.subject_id == SUBJECT)).scalar_one()
            assert rekey_data_key(conn, vault.keys, key_id) is not None

    acknowledged = _tokenize_while(vault, rekey)
    assert len(acknowledged) > 100
    assert _unreadable(vault, acknowledged) == []


def test_correction_during_tokenize_for_the_same_subject_loses_nothing(vault: Components) -> None:
    first = vault.tokens.tokenize(CHECKOUT, [_card(7)], HERE)[0]
    assert isinstance(first, TokenRecord)
    n = iter(range(10**9))

    def correct() -> None:
        vault.privacy.correct(StepUp(actor=OFFICER_1, at=datetime.now(UTC)), first.token,
                              {"pan": luhn_pan(7), "exp_month": 1 + next(n) % 12, "exp_year": 2099}, HERE)

    acknowledged = _tokenize_while(vault, correct)
    assert len(acknowledged) > 100
    assert _unreadable(vault, acknowledged) == []


def test_concurrent_disclosure_collects_deliver_once(vault: Components) -> None:
    made = vault.tokens.tokenize(CHECKOUT, [_card(1), _card(2)], HERE)
    assert all(isinstance(m, TokenRecord) for m in made)
    for _round in range(5):
        disclosure = vault.disclosures.request(OFFICER_1, subject_id=SUBJECT, token_list=[], case_reference="c-1",
                                               authority="court", justification="order", origin=HERE)["id"]
        vault.disclosures.approve(OFFICER_2, disclosure, HERE)
        assert _collect_ten(vault, disclosure) == [2]


def _collect_ten(vault: Components, disclosure_id: str) -> list[int]:
    """Ten collects at once; how many values each successful one received."""
    delivered: list[int] = []
    barrier = threading.Barrier(10)

    def collect() -> None:
        barrier.wait()
        with contextlib.suppress(VaultError):  # refused: the expected outcome for nine of ten
            delivered.append(len(vault.disclosures.collect(OFFICER_1, disclosure_id, HERE)["values"]))

    threads = [threading.Thread(target=collect) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return delivered


# -- an operator disabled while in flight (harness: tests/support/access_round.py) -------------------------


def _disable(vault: Components, requester: Operator, approver: Operator, victim: Operator, steps: int) -> None:
    """Disable `victim` under dual control, acknowledged before returning."""
    now = datetime.now(UTC)
    filed = vault.approvals.request(vault.operators.step_up(_as(requester), Secret(requester.code(now, steps)), HERE),
                                    "disable_operator", {"operator_id": victim.id}, HERE)
    vault.approvals.approve(vault.operators.step_up(_as(approver), Secret(approver.code(now, steps)), HERE),
                            filed.id, HERE)


def _as(operator: Operator) -> Actor:
    return Actor(id=operator.id, role=operator.role, name=operator.username)


def test_an_operator_disabled_after_its_step_up_cannot_approve(vault: Components) -> None:
    requester, approver, victim = (make_operator(vault, f"race{n}admin", "admin") for n in "abc")
    bystander = make_operator(vault, "racebystander", "auditor")
    mine = vault.approvals.request(vault.operators.step_up(_as(requester), Secret(requester.code(datetime.now(UTC))),
                                                           HERE), "disable_operator", {"operator_id": bystander.id},
                                   HERE)
    proof = vault.operators.step_up(_as(victim), Secret(victim.code(datetime.now(UTC))), HERE)  # in flight
    _disable(vault, requester, approver, victim, steps=1)
    with pytest.raises(VaultError):  # Forbidden: its step-up predates the acknowledged disable
        vault.approvals.approve(proof, mine.id, HERE)
    assert vault.approvals.list(_as(requester), HERE)[0].status == "pending"


def test_a_login_that_raced_a_disable_opens_no_session(vault: Components) -> None:
    requester, approver, victim = (make_operator(vault, f"login{n}admin", "admin") for n in "abc")
    checked = threading.Event()
    acknowledged = threading.Event()
    verify = vault.operators._passwords.verify

    def slow_verify(stored: str | None, password: Secret[str]) -> bool:
        if stored is not None and "argon2" in stored:  # the victim's password check, after its row was read
            checked.set()
            acknowledged.wait(10)
        return verify(stored, password)

    vault.operators._passwords.verify = slow_verify  # type: ignore[method-assign]
    outcome: list[object] = []

    def login() -> None:
        try:
            outcome.append(vault.operators.login(victim.username, Secret(victim.password),
                                                 Secret(victim.code(datetime.now(UTC))), HERE))
        except VaultError as error:
            outcome.append(error)

    thread = threading.Thread(target=login)
    thread.start()
    assert checked.wait(10)
    vault.operators._passwords.verify = verify  # type: ignore[method-assign]
    _disable(vault, requester, approver, victim, steps=1)
    acknowledged.set()
    thread.join()
    assert len(outcome) == 1 and isinstance(outcome[0], VaultError), "a session was opened after the disable"
