"""The circuit breaker as a pure state machine, driven by hand and by hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core.failures.breaker import BreakerRegistry, CircuitBreaker, Transition


def make(threshold: int = 3, reset_s: float = 60.0) -> CircuitBreaker:
    return CircuitBreaker("llm gpt", failure_threshold=threshold, reset_s=reset_s)


def test_opens_at_threshold_and_refuses() -> None:
    breaker = make()
    assert breaker.record_failure(now_s=1) is None
    assert breaker.record_failure(now_s=2) is None
    assert breaker.record_failure(now_s=3) == Transition("closed", "open", 3, 3)
    assert not breaker.allow(now_s=10)
    snap = breaker.snapshot(now_s=10)
    assert (snap.state, snap.consecutive_failures, snap.opened_at_s, snap.retry_in_s) == ("open", 3, 3, 53)


def test_success_resets_the_count() -> None:
    breaker = make()
    breaker.record_failure(now_s=1)
    breaker.record_failure(now_s=2)
    assert breaker.record_success(now_s=3) is None
    assert breaker.record_failure(now_s=4) is None
    assert breaker.state == "closed"


def test_one_probe_then_close() -> None:
    breaker = make(threshold=1, reset_s=60)
    breaker.record_failure(now_s=0)
    assert breaker.allow(now_s=60)
    assert breaker.state == "half_open"
    assert not breaker.allow(now_s=61)  # the probe is out
    transition = breaker.record_success(now_s=62)
    assert transition is not None and (transition.from_state, transition.to_state) == ("half_open", "closed")
    assert breaker.allow(now_s=63) and breaker.allow(now_s=63)


def test_failed_probe_reopens() -> None:
    breaker = make(threshold=2, reset_s=10)
    breaker.record_failure(now_s=0)
    breaker.record_failure(now_s=0)
    assert breaker.allow(now_s=10)
    transition = breaker.record_failure(now_s=11)
    assert transition is not None and (transition.from_state, transition.to_state) == ("half_open", "open")
    assert not breaker.allow(now_s=20)
    assert breaker.allow(now_s=21)


def test_neutral_releases_the_probe_without_changing_state() -> None:
    breaker = make(threshold=1, reset_s=5)
    breaker.record_failure(now_s=0)
    assert breaker.allow(now_s=5)
    breaker.record_neutral()
    assert breaker.state == "half_open"
    assert breaker.allow(now_s=6)
    assert not breaker.allow(now_s=6)


def test_lost_probe_expires_after_its_lease() -> None:
    breaker = CircuitBreaker("x", failure_threshold=1, reset_s=5, probe_lease_s=100)
    breaker.record_failure(now_s=0)
    assert breaker.allow(now_s=5)
    assert not breaker.allow(now_s=104)
    assert breaker.allow(now_s=105)


def test_registry_one_breaker_per_endpoint_and_model() -> None:
    registry = BreakerRegistry(failure_threshold=2, reset_s=30)
    first = registry.get("https://api.openai.com/v1", "gpt-4o-mini")
    assert registry.get("https://api.openai.com/v1", "gpt-4o-mini") is first
    other = registry.get("https://api.openai.com/v1", "gpt-4o")
    assert other is not first and registry.all() == [first, other]
    assert other.failure_threshold == 2 and other.reset_s == 30


EVENTS = st.lists(st.tuples(st.sampled_from(["allow", "success", "failure", "neutral"]),
                            st.floats(0, 40, allow_nan=False)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(1, 5), reset_s=st.floats(0, 100, allow_nan=False), events=EVENTS)
def test_breaker_invariants(threshold: int, reset_s: float, events: list[tuple[str, float]]) -> None:
    """Never two probes out at once in half_open; opens exactly when consecutive failures
    reach the threshold; every transition is a legal edge."""
    breaker = CircuitBreaker("p", failure_threshold=threshold, reset_s=reset_s, probe_lease_s=1e9)
    now_s = 0.0
    probes_out = 0  # calls let through while half-open and not yet reported
    run_of_failures = 0
    legal = {("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("half_open", "closed")}
    for action, step_s in events:
        now_s += step_s
        before = breaker.state
        if action == "allow":
            allowed = breaker.allow(now_s=now_s)
            if before == "open" and now_s - (breaker.opened_at_s or 0) < reset_s:
                assert not allowed
            if breaker.state == "half_open" and allowed:
                probes_out += 1
            assert probes_out <= 1
            continue
        if action == "success":
            transition = breaker.record_success(now_s=now_s)
            if before != "open":
                run_of_failures = 0
        elif action == "failure":
            transition = breaker.record_failure(now_s=now_s)
            run_of_failures += 1
            if before == "closed":
                assert (breaker.state == "open") == (run_of_failures >= threshold)
                if transition is not None:
                    assert run_of_failures == threshold
        else:
            breaker.record_neutral()
            transition = None
        if before == "half_open":
            probes_out = 0
        if transition is not None:
            assert (transition.from_state, transition.to_state) in legal
            assert transition.to_state == breaker.state
        if breaker.state != "half_open":
            probes_out = 0
        assert breaker.consecutive_failures == run_of_failures
