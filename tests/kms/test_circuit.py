"""The circuit breaker, driven by an injected clock."""

from __future__ import annotations

import threading

import pytest

from kms.circuit import CircuitBreaker
from tests.kms.conftest import FakeClock


def state(cb: CircuitBreaker) -> str:
    """Read through a function so the type checker does not pin the state literal."""
    return cb.state


def breaker(clock: FakeClock, failures: int = 3, reset: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=failures, reset_timeout=reset, clock=clock)


def test_closed_until_threshold_consecutive_failures(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock)
    for _ in range(2):
        assert cb.allow()
        cb.record_failure()
    assert state(cb) == "closed" and cb.allow()
    cb.record_failure()
    assert state(cb) == "open"
    assert not cb.allow()
    assert cb.retry_after() == pytest.approx(10.0)


def test_success_resets_the_count(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock)
    cb.record_failure()
    cb.record_failure()
    cb.record_success()
    assert cb.consecutive_failures == 0
    cb.record_failure()
    cb.record_failure()
    assert state(cb) == "closed"


def test_half_open_after_cool_down_lets_one_probe(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock, failures=1)
    cb.record_failure()
    fake_clock.advance(9.9)
    assert not cb.allow()
    fake_clock.advance(0.2)
    assert state(cb) == "half_open"
    assert cb.retry_after() == 0.0
    assert cb.allow()  # the probe
    assert not cb.allow()  # everyone else still fails fast
    cb.record_success()
    assert state(cb) == "closed"
    assert cb.allow() and cb.allow()


def test_failed_probe_reopens_for_a_full_cool_down(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock, failures=2)
    cb.record_failure()
    cb.record_failure()
    fake_clock.advance(11)
    assert cb.allow()
    cb.record_failure()
    assert state(cb) == "open"
    assert not cb.allow()
    fake_clock.advance(9)
    assert not cb.allow()
    fake_clock.advance(2)
    assert cb.allow()


def test_a_lost_probe_does_not_block_forever(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock, failures=1)
    cb.record_failure()
    fake_clock.advance(10)
    assert cb.allow()  # probe never reports back
    fake_clock.advance(5)
    assert not cb.allow()
    fake_clock.advance(5)
    assert cb.allow()


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(reset_timeout=0)


def test_thread_safe_counting(fake_clock: FakeClock) -> None:
    cb = breaker(fake_clock, failures=1000)

    def fail_100() -> None:
        for _ in range(100):
            cb.record_failure()

    threads = [threading.Thread(target=fail_100) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cb.consecutive_failures == 800
    assert state(cb) == "closed"
