"""Bounded retries for one LLM call: at most LLM_MAX_RETRIES, never past the turn deadline.

The loop is ours, the schedule is backoff's. The waits come from
core/failures/backoff_schedule.py (`backoff.expo` with full jitter, the same schedule the
outbox and the start-up retries use). The loop around them is not `backoff.on_exception`,
because that decorator cannot express what a turn needs: its async retry sleeps with a
hard-wired `asyncio.sleep` (tests could not observe a Retry-After wait without sleeping), it
times `max_time` with the wall clock (not an injectable monotonic one) and checks it only after
a wait has already been taken, its limit is one `max_tries` for all errors (context overflow
needs its own limit of one), and the target cannot learn that the next attempt must shrink its
context. The loop below is short, has explicit bounds, and is tested without real sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from core.failures.backoff_schedule import jittered_wait_s
from core.failures.taxonomy import Attempt, GatewayError, Kind

if TYPE_CHECKING:
    from config.settings import Settings

T = TypeVar("T")
MAX_TURN_DEADLINE_S = 600.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry parameters in one frozen object.

    `wait_scale` multiplies the exponential (jittered) part of a wait only; tests set it to 0.
    A server's Retry-After is honoured as given (up to `retry_after_cap_s`) whatever the scale,
    because waiting less than the provider asked only earns another 429.
    """

    max_retries: int = 1
    base_wait_s: float = 0.5
    max_wait_s: float = 8.0
    retry_after_cap_s: float = 30.0
    turn_deadline_s: float = 120.0
    wait_scale: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """LLM_MAX_RETRIES, the test wait scale, and a deadline of two attempts plus 30 s of
        waiting (capped at 10 minutes so a huge LLM_TIMEOUT_SECONDS cannot hold a turn forever)."""
        deadline_s = min(2 * settings.llm_timeout_seconds + 30.0, MAX_TURN_DEADLINE_S)
        return cls(max_retries=settings.llm_max_retries, wait_scale=settings.retry_wait_scale,
                   turn_deadline_s=deadline_s)


def compute_wait_s(*, attempt: int, retry_after_s: float | None, policy: RetryPolicy, rand: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based).

    The shared schedule's full-jitter wait (`rand` in [0, 1) times min(max_wait_s,
    base_wait_s * 2**(attempt-1))), times wait_scale. With a Retry-After, the wait is at least
    the Retry-After (capped at retry_after_cap_s), unscaled.
    """
    jitter_s = policy.wait_scale * jittered_wait_s(attempt=attempt, base_wait_s=policy.base_wait_s,
                                                   max_wait_s=policy.max_wait_s, rand=rand)
    if retry_after_s is None:
        return jitter_s
    honoured_s = min(max(retry_after_s, 0.0), policy.retry_after_cap_s)
    return max(honoured_s, jitter_s)


def _give_up_reason(error: GatewayError, *, retries_done: int, overflow_retries: int, policy: RetryPolicy) -> str | None:
    info = error.info
    if not info.retryable:
        return "not retryable"
    if retries_done >= policy.max_retries:
        return "retries exhausted"
    if error.kind is Kind.llm_context_overflow and overflow_retries >= info.retry_limit(
            configured_retries=policy.max_retries):
        return "context still too large"
    return None


async def call_with_retry(
    attempt_fn: Callable[[int, bool], Awaitable[T]],
    *,
    policy: RetryPolicy,
    classify: Callable[[BaseException], GatewayError],
    on_retry: Callable[[int, GatewayError, float], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> T:
    """Run `attempt_fn(attempt_number, shrink_context)` until it succeeds or may not retry.

    Attempts are numbered from 1. `shrink_context` becomes True after an llm_context_overflow
    and stays True for later attempts (the smaller prompt is what fits). Only retryable kinds
    are retried, at most `policy.max_retries` times in all (context overflow at most once),
    and a retry whose wait would cross `turn_deadline_s` (from the first call) is not taken.
    `on_retry(failed_attempt, error, wait_s)` is called before each wait, e.g. to record a span
    event. Finally the classified GatewayError is raised from the original exception, with
    `attempts`: one Attempt(attempt, kind, detail, at_s) per failure, and `gave_up` saying why.
    Cancellation (asyncio.CancelledError) is never retried.
    """
    deadline_s = monotonic() + policy.turn_deadline_s
    attempts: list[Attempt] = []
    retries_done = overflow_retries = 0
    shrink_context = False
    attempt = 0
    while True:
        attempt += 1
        try:
            return await attempt_fn(attempt, shrink_context)
        except Exception as exc:  # classified below; CancelledError (a BaseException) passes through
            error = classify(exc)
            now_s = monotonic()
            attempts.append(Attempt(attempt, error.kind, error.detail, now_s))
            reason = _give_up_reason(error, retries_done=retries_done, overflow_retries=overflow_retries,
                                     policy=policy)
            wait_s = 0.0
            if reason is None:
                wait_s = compute_wait_s(attempt=attempt, retry_after_s=error.retry_after_s, policy=policy,
                                        rand=rand())
                if now_s + wait_s > deadline_s:
                    reason = "turn deadline"
            if reason is not None:
                error.attempts = attempts
                error.gave_up = reason
                if error is exc:
                    raise
                raise error from exc
        if on_retry is not None:
            on_retry(attempt, error, wait_s)
        await sleep(wait_s)
        retries_done += 1
        if error.kind is Kind.llm_context_overflow:
            overflow_retries += 1
            shrink_context = True

