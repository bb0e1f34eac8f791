"""A circuit breaker per LLM endpoint and model, as a pure state machine.

Written here rather than taken from `purgatory`: the pipeline needs the state synchronously for
`/status` and escalation, and each transition returned as a value (so that closing can send a
recovery notice and start the DLQ replay); a dozen lines of state do that with no I/O and no
hidden clock, which also lets hypothesis drive it.

closed --(failure_threshold consecutive failures)--> open --(reset_s elapsed, allow())-->
half_open, with exactly one probe out at a time; a successful probe closes the circuit, a
failed one reopens it. The caller records only outage failures (timeout, connection, rate
limit, server) with `record_failure`; any other outcome of a probe is `record_neutral`, which
releases the probe without changing state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Transition:
    from_state: State
    to_state: State
    at_s: float
    consecutive_failures: int


@dataclass(frozen=True)
class BreakerSnapshot:
    name: str
    state: State
    consecutive_failures: int
    opened_at_s: float | None
    retry_in_s: float | None  # open: seconds until a probe may go; otherwise None
    probe_out: bool


class CircuitBreaker:
    """One circuit. Times are monotonic seconds passed in by the caller.

    A probe that is never reported (its task was killed without a `finally`) would hold the
    circuit half-open forever; after `probe_lease_s` it is presumed lost and another probe may
    go. Keep the lease longer than the turn deadline.
    """

    def __init__(self, name: str, *, failure_threshold: int, reset_s: float, probe_lease_s: float = 900.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.probe_lease_s = probe_lease_s
        self.state: State = "closed"
        self.consecutive_failures = 0
        self.opened_at_s: float | None = None
        self._probe_since_s: float | None = None
        self.last_transition: Transition | None = None

    def _move(self, to_state: State, *, now_s: float) -> Transition:
        transition = Transition(self.state, to_state, now_s, self.consecutive_failures)
        self.state = to_state
        self.last_transition = transition
        return transition

    def allow(self, *, now_s: float) -> bool:
        """May a call go now? In half_open, True for exactly one caller until it reports."""
        if self.state == "closed":
            return True
        if self.state == "open":
            assert self.opened_at_s is not None
            if now_s - self.opened_at_s < self.reset_s:
                return False
            self._move("half_open", now_s=now_s)
            self._probe_since_s = None
        if self._probe_since_s is not None and now_s - self._probe_since_s < self.probe_lease_s:
            return False
        self._probe_since_s = now_s
        return True

    def record_success(self, *, now_s: float) -> Transition | None:
        """A call succeeded. Closes a half-open circuit; a late success while open is ignored
        (it started before the circuit opened and says little about the provider now)."""
        if self.state == "open":
            return None
        self.consecutive_failures = 0
        if self.state == "half_open":
            self._probe_since_s = None
            self.opened_at_s = None
            return self._move("closed", now_s=now_s)
        return None

    def record_failure(self, *, now_s: float) -> Transition | None:
        """An outage-kind failure. Opens at the threshold; a failed probe reopens."""
        self.consecutive_failures += 1
        if self.state == "closed" and self.consecutive_failures >= self.failure_threshold:
            self.opened_at_s = now_s
            return self._move("open", now_s=now_s)
        if self.state == "half_open":
            self._probe_since_s = None
            self.opened_at_s = now_s
            return self._move("open", now_s=now_s)
        return None

    def record_neutral(self) -> None:
        """A call ended in a failure that says nothing about the provider's health."""
        if self.state == "half_open":
            self._probe_since_s = None

    def snapshot(self, *, now_s: float) -> BreakerSnapshot:
        retry_in_s = None
        if self.state == "open" and self.opened_at_s is not None:
            retry_in_s = max(0.0, self.opened_at_s + self.reset_s - now_s)
        return BreakerSnapshot(self.name, self.state, self.consecutive_failures, self.opened_at_s, retry_in_s,
                               self._probe_since_s is not None)


class BreakerRegistry:
    """One breaker per (endpoint, model), created on first use with the same parameters."""

    def __init__(self, *, failure_threshold: int, reset_s: float, probe_lease_s: float = 900.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_s = reset_s
        self.probe_lease_s = probe_lease_s
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def get(self, endpoint: str, model: str) -> CircuitBreaker:
        key = (endpoint, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(f"{endpoint} {model}", failure_threshold=self.failure_threshold,
                                     reset_s=self.reset_s, probe_lease_s=self.probe_lease_s)
            self._breakers[key] = breaker
        return breaker

    def all(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())
