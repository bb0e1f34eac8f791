"""One exponential schedule for every wait the gateway takes between attempts.

LLM retries (core/failures/retry.py), outbox redelivery (core/failures/escalation.py) and the
start-up retries of the Bot API (bot/app.py) all take their waits from here, so they cannot
drift apart. The sequence itself is `backoff.expo` (the declared `backoff` dependency): its
generator is the ceiling of the n-th wait. The retry loops stay our own (see retry.py for why
`backoff.on_exception` does not fit); only the arithmetic is shared.
"""

from __future__ import annotations

from itertools import islice

import backoff


def ceiling_wait_s(*, attempt: int, base_wait_s: float, max_wait_s: float) -> float:
    """The longest wait after failed attempt number `attempt` (1-based): base * 2**(attempt-1), capped."""
    schedule = backoff.expo(base=2, factor=base_wait_s, max_value=max_wait_s)
    next(schedule)  # backoff's generators start primed with a bare `yield`
    return next(islice(schedule, min(max(0, attempt - 1), 64), None))  # capped long before 64


def jittered_wait_s(*, attempt: int, base_wait_s: float, max_wait_s: float, rand: float) -> float:
    """Full jitter (AWS's "Full Jitter", backoff.full_jitter) with the random draw passed in,
    so callers and tests choose it: `rand` in [0, 1] times the ceiling."""
    return min(max(rand, 0.0), 1.0) * ceiling_wait_s(attempt=attempt, base_wait_s=base_wait_s,
                                                     max_wait_s=max_wait_s)
