"""gate: the chat's model, and the circuit breakers, checked before any context is assembled."""

from __future__ import annotations

from opentelemetry import trace

from core.failures.taxonomy import GatewayError, Kind
from core.turn import Turn


async def run(turn: Turn) -> None:
    """Resolve the chat's model (/model), then fail fast while the circuit of that model and of
    every fallback is open: no context to assemble, no budget to check, no call. Only looks (the
    snapshot changes nothing): once a reset time has passed, the llm stage's `allow()` lets
    exactly one probe through."""
    services = turn.services
    models = services.models
    turn.model = models.resolve(await services.chat_models.get(turn.inbound.chat_id))
    span = trace.get_current_span()
    now_s = services.clock.monotonic()
    waits: list[float] = []
    first = ""
    for index, name in enumerate(models.order_for(turn.model)):
        breaker = services.breakers.get(models.endpoint(name).base_url, name)
        snapshot = breaker.snapshot(now_s=now_s)
        if index == 0:
            span.set_attribute("circuit.state", snapshot.state)
            first = breaker.name
        if not (snapshot.state == "open" and snapshot.retry_in_s):
            return
        waits.append(snapshot.retry_in_s)
    raise GatewayError(Kind.circuit_open, f"circuit {first} is open for {min(waits):.1f} s more"
                       + (" (and every fallback's)" if len(waits) > 1 else ""))
