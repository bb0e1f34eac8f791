"""The core pipeline: one inbound message in, one reply (or error reply, or DLQ entry) out.

A turn runs the stages in STAGES, in that order, each a span of the turn's trace; each stage
is a module of this package with one `run(turn)` coroutine, and this is the only module that
knows their order:
  validate   re-check the inbound contract (fail fast, before anything is spent)
  authorize  allowed users and the operator only (a refusal costs no LLM call)
  throttle   per-user rate limit, before any LLM spend
  ingest     documents and very long texts become artifacts; the prompt gets a reference
  gate       the circuit breaker: fail fast while the provider is known to be down
  context    system prompt + hot state + history that fits + the message, token-budgeted
  budget     refuse before the call if the turn could cross a spend cap
  llm        the agent call (streamed, retried at most LLM_MAX_RETRIES, tool rounds bounded)
  persist    history, hot state and usage
  reply      the final answer to the channel (then, with /voice on, a spoken message's voice note)
Any stage may end the turn early (`TurnEnded`) or fail (`GatewayError` and friends); failures
are handled in one place (`failure.fail_turn`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from core.chat_turns import ChatTurns
from core.contracts import InboundMessage, TurnGuard
from core.pipeline import (
    authorize,
    budget,
    context,
    gate,
    ingest,
    llm,
    persist,
    reply,
    throttle,
    validate,
)
from core.pipeline.failure import fail_turn
from core.ports import Channel
from core.services import Services
from core.turn import Outcome, Turn, TurnEnded

__all__ = ["STAGES", "Pipeline", "Stage"]
log = logging.getLogger(__name__)
Stage = Callable[[Turn], Awaitable[None]]

# The order matters: nothing that costs money (llm) runs before the checks that can refuse
# for free (authorize, throttle, gate, budget), and the budget needs the context's size.
STAGES: list[tuple[str, Stage]] = [
    ("validate", validate.run),
    ("authorize", authorize.run),
    ("throttle", throttle.run),
    ("ingest", ingest.run),
    ("gate", gate.run),
    ("context", context.run),
    ("budget", budget.run),
    ("llm", llm.run),
    ("persist", persist.run),
    ("reply", reply.run),
]


class Pipeline:
    """Runs turns; one at a time per chat (history order), many chats concurrently. `turns` holds a
    chat for a turn: in this process, and across instances on a shared database (core/chat_turns.py)."""

    def __init__(self, services: Services, *, turns: ChatTurns | None = None) -> None:
        self.services = services
        self.turns = turns or ChatTurns()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stages = list(STAGES)

    async def run_turn(self, inbound: InboundMessage, channel: Channel, *, late_of: str | None = None,
                       replay_dlq_id: int | None = None) -> Outcome:
        """Run one turn inside the current span (the caller opened the turn's root span)."""
        turn = Turn(inbound=inbound, channel=channel, services=self.services, guard=TurnGuard(inbound),
                    late_of=late_of, replay_dlq_id=replay_dlq_id)
        # A replay answers an old message late, on purpose: it waits for the chat, not for the order.
        ordered_by = None if replay_dlq_id is not None else inbound.update_id
        self._enter()
        try:
            async with self.turns.hold(inbound.chat_id, update_id=ordered_by):
                with self.services.running.running(inbound.chat_id, turn.stop):  # /stop finds it here
                    return await self._run_stages(turn)
        finally:
            self._leave()

    async def _run_stages(self, turn: Turn) -> Outcome:
        tracer = self.services.tracer
        root = trace.get_current_span()
        root.set_attributes({"chat.id": turn.inbound.chat_id, "user.id": turn.inbound.user_id})
        started = time.perf_counter()
        try:
            for name, stage in self.stages:
                # Exceptions are recorded by hand: a stage ending the turn on purpose (a refusal,
                # the throttle) is not an error, and must not show as one in traces and scores.
                with tracer.start_as_current_span(name, record_exception=False, set_status_on_exception=False) as span:
                    try:
                        await stage(turn)
                    except TurnEnded as ended:
                        span.set_attribute("turn.ended", str(ended))
                        raise
                    except Exception as error:
                        kind = str(getattr(error, "kind", "") or type(error).__name__)  # the taxonomy's, if any
                        span.record_exception(error)
                        span.set_attribute("error.type", kind)
                        span.set_status(trace.Status(trace.StatusCode.ERROR, kind))
                        raise
        except TurnEnded:
            pass
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # every failure ends the same way: reply, DLQ, escalation
            turn.outcome = await fail_turn(turn, error)
        root.set_attribute("turn.outcome", turn.outcome)
        if turn.outcome in ("failed", "dlq"):
            root.set_status(trace.Status(trace.StatusCode.ERROR, turn.outcome))
        # One line per turn even at INFO, for log drains: it carries the trace id like every line.
        log.info("turn %s: %s in %.0f ms (chat %s, user %s, %d tokens)", turn.ref, turn.outcome,
                 (time.perf_counter() - started) * 1000, turn.inbound.chat_id, turn.inbound.user_id,
                 turn.tokens_spent)
        return turn.outcome

    # In-flight accounting, so SIGTERM can wait for running turns to finish.
    def _enter(self) -> None:
        self._inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
