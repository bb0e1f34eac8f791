"""gate: the circuit breaker, checked before any context is assembled."""

from __future__ import annotations

from opentelemetry import trace

from core.failures.taxonomy import GatewayError, Kind
from core.turn import Turn


async def run(turn: Turn) -> None:
    """Fail fast while the circuit is open: no context to assemble, no budget to check, no call.
    Only looks (the snapshot changes nothing): once the reset time has passed, the llm stage's
    `allow()` lets exactly one probe through."""
    services, settings = turn.services, turn.services.settings
    breaker = services.breakers.get(settings.llm_base_url, settings.llm_model)
    snapshot = breaker.snapshot(now_s=services.clock.monotonic())
    trace.get_current_span().set_attribute("circuit.state", snapshot.state)
    if snapshot.state == "open" and snapshot.retry_in_s:
        raise GatewayError(Kind.circuit_open, f"circuit {breaker.name} is open for {snapshot.retry_in_s:.1f} s more")
