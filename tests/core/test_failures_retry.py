"""Retries are bounded, reported, and honour Retry-After without sleeping in tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.failures.backoff_schedule import jittered_wait_s
from core.failures.llm_errors import classify_llm_error
from core.failures.retry import RetryPolicy, call_with_retry, compute_wait_s
from core.failures.taxonomy import GatewayError, Kind

ZERO_WAIT = RetryPolicy(max_retries=1, wait_scale=0.0)


class Script:
    """An attempt function that raises the scripted errors in order, then returns 'ok'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[int, bool]] = []

    async def __call__(self, attempt: int, shrink_context: bool) -> str:
        self.calls.append((attempt, shrink_context))
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class FakeTime:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, wait_s: float) -> None:
        self.slept.append(wait_s)
        self.now_s += wait_s


def gw(kind: Kind, retry_after_s: float | None = None) -> GatewayError:
    return GatewayError(kind, "scripted", retry_after_s=retry_after_s)


async def run(script: Script, policy: RetryPolicy = ZERO_WAIT, clock: FakeTime | None = None,
              on_retry=None) -> str:
    clock = clock or FakeTime()
    return await call_with_retry(script, policy=policy, classify=classify_llm_error, on_retry=on_retry,
                                 monotonic=clock.monotonic, sleep=clock.sleep, rand=lambda: 0.5)


async def test_success_first_time() -> None:
    script = Script()
    assert await run(script) == "ok"
    assert script.calls == [(1, False)]


async def test_retryable_failure_three_times_is_two_calls() -> None:
    script = Script(TimeoutError(), TimeoutError(), TimeoutError())
    retries: list[tuple[int, Kind, float]] = []
    with pytest.raises(GatewayError) as caught:
        await run(script, on_retry=lambda attempt, error, wait_s: retries.append((attempt, error.kind, wait_s)))
    assert script.calls == [(1, False), (2, False)]
    assert retries == [(1, Kind.llm_timeout, 0.0)]
    error = caught.value
    assert error.kind is Kind.llm_timeout and error.gave_up == "retries exhausted"
    assert [a.attempt for a in error.attempts] == [1, 2]
    assert isinstance(error.__cause__, TimeoutError)


async def test_retry_then_success() -> None:
    script = Script(gw(Kind.llm_server))
    assert await run(script) == "ok"
    assert script.calls == [(1, False), (2, False)]


async def test_non_retryable_is_one_call() -> None:
    script = Script(gw(Kind.llm_auth))
    with pytest.raises(GatewayError) as caught:
        await run(script, policy=RetryPolicy(max_retries=3, wait_scale=0))
    assert script.calls == [(1, False)]
    assert caught.value.gave_up == "not retryable" and len(caught.value.attempts) == 1


async def test_context_overflow_retried_once_with_shrink() -> None:
    script = Script(gw(Kind.llm_context_overflow), gw(Kind.llm_context_overflow), gw(Kind.llm_context_overflow))
    with pytest.raises(GatewayError) as caught:
        await run(script, policy=RetryPolicy(max_retries=3, wait_scale=0))
    assert script.calls == [(1, False), (2, True)]
    assert caught.value.gave_up == "context still too large"


async def test_shrink_stays_on_after_overflow() -> None:
    script = Script(gw(Kind.llm_context_overflow), gw(Kind.llm_timeout))
    assert await run(script, policy=RetryPolicy(max_retries=2, wait_scale=0)) == "ok"
    assert script.calls == [(1, False), (2, True), (3, True)]


async def test_zero_retries_configured() -> None:
    script = Script(gw(Kind.llm_timeout))
    with pytest.raises(GatewayError):
        await run(script, policy=RetryPolicy(max_retries=0))
    assert len(script.calls) == 1


async def test_retry_after_honoured_with_zero_scale() -> None:
    clock = FakeTime()
    script = Script(gw(Kind.llm_rate_limit, retry_after_s=2.0))
    waits: list[float] = []
    assert await run(script, clock=clock, on_retry=lambda a, e, wait_s: waits.append(wait_s)) == "ok"
    assert clock.slept == [2.0] and waits == [2.0]


async def test_wait_crossing_the_deadline_gives_up() -> None:
    clock = FakeTime()
    policy = RetryPolicy(max_retries=3, wait_scale=0, turn_deadline_s=10.0)
    script = Script(gw(Kind.llm_rate_limit, retry_after_s=20.0))
    with pytest.raises(GatewayError) as caught:
        await run(script, policy=policy, clock=clock)
    assert caught.value.gave_up == "turn deadline" and clock.slept == []


async def test_deadline_counts_time_spent_in_attempts() -> None:
    clock = FakeTime()

    async def slow(attempt: int, shrink_context: bool) -> str:
        clock.now_s += 9.0
        raise TimeoutError

    with pytest.raises(GatewayError):
        await call_with_retry(slow, policy=RetryPolicy(max_retries=5, base_wait_s=1.0, turn_deadline_s=20.0),
                              classify=classify_llm_error, monotonic=clock.monotonic, sleep=clock.sleep,
                              rand=lambda: 0.99)
    assert len(clock.slept) == 1  # 9 s + ~1 s wait + 9 s, then the next wait would cross 20 s


def test_compute_wait_exponential_with_jitter() -> None:
    policy = RetryPolicy(base_wait_s=0.5, max_wait_s=8.0)
    assert compute_wait_s(attempt=1, retry_after_s=None, policy=policy, rand=0.5) == 0.25
    assert compute_wait_s(attempt=3, retry_after_s=None, policy=policy, rand=0.5) == 1.0
    assert compute_wait_s(attempt=10, retry_after_s=None, policy=policy, rand=0.5) == 4.0
    assert compute_wait_s(attempt=3, retry_after_s=None, policy=RetryPolicy(wait_scale=0), rand=0.9) == 0.0
    assert compute_wait_s(attempt=1, retry_after_s=100.0, policy=policy, rand=0.5) == 30.0
    assert compute_wait_s(attempt=1, retry_after_s=2.0, policy=RetryPolicy(wait_scale=0), rand=0.5) == 2.0


@given(attempt=st.integers(1, 50), rand=st.floats(0, 1, exclude_max=True),
       retry_after=st.none() | st.floats(0, 1e6), scale=st.floats(0, 10))
def test_compute_wait_is_bounded(attempt: int, rand: float, retry_after: float | None, scale: float) -> None:
    policy = RetryPolicy(wait_scale=scale)
    wait_s = compute_wait_s(attempt=attempt, retry_after_s=retry_after, policy=policy, rand=rand)
    assert 0 <= wait_s <= max(policy.max_wait_s * scale, policy.retry_after_cap_s)
    if retry_after is not None:
        assert wait_s >= min(retry_after, policy.retry_after_cap_s)


async def test_the_loop_sleeps_the_shared_schedule() -> None:
    """Retries sleep the full-jitter waits of core.failures.backoff_schedule, capped at
    max_wait_s, scaled by wait_scale; a Retry-After longer than the jitter wins, a shorter one not."""
    clock = FakeTime()
    policy = RetryPolicy(max_retries=6, base_wait_s=0.5, max_wait_s=2.0, wait_scale=3.0, turn_deadline_s=600.0)
    script = Script(gw(Kind.llm_server), gw(Kind.llm_server), gw(Kind.llm_server), gw(Kind.llm_server),
                    gw(Kind.llm_rate_limit, retry_after_s=5.0), gw(Kind.llm_rate_limit, retry_after_s=0.1))
    assert await call_with_retry(script, policy=policy, classify=classify_llm_error, monotonic=clock.monotonic,
                                 sleep=clock.sleep, rand=lambda: 0.75) == "ok"
    schedule = [3.0 * jittered_wait_s(attempt=n, base_wait_s=0.5, max_wait_s=2.0, rand=0.75) for n in range(1, 7)]
    assert schedule == [1.125, 2.25, 4.5, 4.5, 4.5, 4.5]  # 0.75 * min(2, 0.5 * 2**(n-1)) * 3
    assert clock.slept == [*schedule[:4], 5.0, schedule[5]]


def test_policy_from_settings() -> None:
    settings = SimpleNamespace(llm_max_retries=2, llm_timeout_seconds=60.0, retry_wait_scale=0.0)
    policy = RetryPolicy.from_settings(settings)  # type: ignore[arg-type]
    assert (policy.max_retries, policy.wait_scale, policy.turn_deadline_s) == (2, 0.0, 150.0)
    huge = SimpleNamespace(llm_max_retries=1, llm_timeout_seconds=3600.0, retry_wait_scale=1.0)
    assert RetryPolicy.from_settings(huge).turn_deadline_s == 600.0  # type: ignore[arg-type]
