"""The circuit breaker alone, on a fake clock: one outage, one failure; one probe."""

from __future__ import annotations

import pytest

from otel_backpressure.ratelimit._breaker import SKIP, Breaker
from otel_backpressure.testing import FakeClock


def opened(probe_interval: float = 1.0) -> tuple[FakeClock, Breaker]:
    """A breaker that one failure has just opened."""
    clock = FakeClock()
    breaker = Breaker(probe_interval=probe_interval, clock=clock)
    breaker.failed(breaker.admit(), "ConnectionError")
    return clock, breaker


def test_many_failures_in_flight_are_one_outage() -> None:
    clock = FakeClock()
    breaker = Breaker(probe_interval=1.0, clock=clock)
    tickets = [breaker.admit() for _ in range(100)]  # 100 calls in flight when Redis stalls
    assert SKIP not in tickets
    for ticket in tickets:
        clock.advance(0.01)  # their timeouts arrive one after another
        breaker.failed(ticket, "TimeoutError")
    assert breaker.outages == 1
    # the wait counts from the first failure, not the last: the late ones changed nothing
    assert breaker.retry_in() == pytest.approx(1.0 - 0.99)
    assert breaker.admit() == SKIP


def test_one_probe_at_a_time_closes_on_success() -> None:
    clock, breaker = opened(1.0)
    assert (breaker.state, breaker.admit()) == ("open", SKIP)
    clock.advance(1.0)
    probe = breaker.admit()
    assert probe != SKIP
    assert breaker.state == "half-open"
    assert breaker.admit() == SKIP  # the others keep skipping while the probe is out
    breaker.succeeded(probe)
    assert breaker.state == "closed"
    assert breaker.admit() != SKIP
    assert breaker.outages == 1


def test_a_failed_probe_waits_one_interval_however_long_the_outage() -> None:
    clock, breaker = opened(0.5)
    for _ in range(100):  # 50 s down: the interval never grows
        clock.advance(0.5)
        probe = breaker.admit()
        assert probe != SKIP
        breaker.failed(probe, "ConnectionError")
        assert breaker.retry_in() == pytest.approx(0.5)
    assert breaker.outages == 1


def test_a_late_failure_from_before_recovery_does_not_reopen() -> None:
    clock = FakeClock()
    breaker = Breaker(probe_interval=1.0, clock=clock)
    first, straggler = breaker.admit(), breaker.admit()
    breaker.failed(first, "TimeoutError")
    clock.advance(1.0)
    probe = breaker.admit()
    breaker.succeeded(probe)
    # sent during the outage, its timeout lands after the probe closed the breaker
    breaker.failed(straggler, "TimeoutError")
    assert breaker.state == "closed"
    assert breaker.outages == 1
    # a call admitted after recovery that fails is a new outage
    breaker.failed(breaker.admit(), "ConnectionError")
    assert breaker.outages == 2


def test_a_success_sent_before_the_outage_does_not_close_it() -> None:
    clock = FakeClock()
    breaker = Breaker(probe_interval=1.0, clock=clock)
    early, failing = breaker.admit(), breaker.admit()
    breaker.failed(failing, "ConnectionError")
    breaker.succeeded(early)  # an answer from before: proves nothing about now
    assert breaker.state == "open"


def test_an_abandoned_probe_hands_the_turn_on() -> None:
    clock, breaker = opened(1.0)
    clock.advance(1.0)
    probe = breaker.admit()
    assert breaker.admit() == SKIP
    breaker.abandoned(probe)  # the probing request was cancelled
    assert breaker.admit() != SKIP
    assert "half-open" in repr(breaker)
