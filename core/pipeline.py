"""The core pipeline: one inbound message in, one reply (or error reply, or DLQ entry) out.

A turn runs the stages in STAGES, in that order, each a span of the turn's trace:
  validate   re-check the inbound contract (fail fast, before anything is spent)
  authorize  allowed users and the operator only (a refusal costs no LLM call)
  throttle   per-user rate limit, before any LLM spend
  ingest     documents and very long texts become artifacts; the prompt gets a reference
  gate       the circuit breaker: fail fast while the provider is known to be down
  context    system prompt + hot state + history that fits + the message, token-budgeted
  budget     refuse before the call if the turn could cross a spend cap
  llm        the agent call (streamed, retried at most LLM_MAX_RETRIES, tool rounds bounded)
  persist    history, hot state and usage
  reply      the final answer to the channel
Any stage may end the turn early (`TurnEnded`) or fail (`GatewayError` and friends); failures
are handled in one place (`core/outcomes.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry import trace

from core.agent import gate_stage, run_agent
from core.contracts import ChatMessage, ContextPlan, InboundMessage, ReplyEvent, TurnGuard
from core.ingest import ingest_stage
from core.outcomes import TurnEnded, fail_turn, keep_undelivered
from core.ports import Channel, DeliveryFailed
from core.prompt import budget_stage, context_stage
from core.services import Services
from core.tracing import short_ref

log = logging.getLogger(__name__)
# "deferred": storage refused a write mid-turn; the journal row stays unfinished and the update
# runs again once storage takes writes (bot/storage_alarm.py), or at the next start.
Outcome = Literal["replied", "failed", "refused", "throttled", "notice", "dlq", "deferred"]


@dataclass
class Turn:
    """Everything one turn carries between stages."""

    inbound: InboundMessage
    channel: Channel
    services: Services
    guard: TurnGuard
    user_text: str = ""
    late_of: str | None = None  # set when a DLQ entry is replayed: the answer comes late
    replay_dlq_id: int | None = None
    plan: ContextPlan | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    user_tokens: int = 0  # the current message's tokens, counted once by the context stage
    current_message: ChatMessage | None = None
    history_in_prompt: list[int] = field(default_factory=list)  # tokens of the history messages sent
    drafting: bool = False  # the answer has started streaming (no more "typing…")
    answer: str = ""
    tokens_spent: int = 0
    history_share: float = 1.0
    outcome: Outcome = "replied"

    @property
    def ref(self) -> str:
        return short_ref(self.inbound.trace_id)

    async def send(self, kind: Literal["notice", "error", "final", "draft", "typing"], text: str = "") -> None:
        await self.channel.deliver(ReplyEvent(kind=kind, trace_id=self.inbound.trace_id, chat_id=self.inbound.chat_id,
                                              text=text, reply_to_message_id=self.inbound.message_id))


Stage = Callable[[Turn], Awaitable[None]]


async def validate_stage(turn: Turn) -> None:
    """Consumer-side check of the inbound contract and the turn's identity."""
    inbound = InboundMessage.model_validate(turn.inbound.model_dump(), strict=False)
    turn.guard.check(inbound, producer=inbound.producer)
    span = trace.get_current_span()
    span.set_attributes({"chat.id": inbound.chat_id, "user.id": inbound.user_id,
                         "message.chars": len(inbound.text), "message.has_attachment": inbound.attachment is not None})
    turn.user_text = inbound.text


async def authorize_stage(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    allowed = inbound.chat_type == "console" or services.is_allowed(inbound.user_id)
    trace.get_current_span().set_attribute("auth.allowed", allowed)
    if not allowed:
        turn.outcome = "refused"
        await turn.send("notice", refusal_text(inbound.user_id))
        raise TurnEnded("refused")


def refusal_text(user_id: int) -> str:
    return (f"Sorry, this bot is private. Your Telegram user id is {user_id}: "
            "ask the operator to add it to ALLOWED_USER_IDS if you should have access.")


async def agent_stage(turn: Turn) -> None:
    await run_agent(turn)


async def persist_stage(turn: Turn) -> None:
    from core.agent import persist_exchange

    persist_exchange(turn)


async def reply_stage(turn: Turn) -> None:
    text = turn.answer
    if turn.late_of:
        text = f"(Sorry for the delay: this answers your message from {turn.late_of}.)\n\n{text}"
    try:
        await turn.send("final", text)
    except DeliveryFailed as failed:
        # The answer exists and is paid for: keep it in the outbox (retried until Telegram takes
        # it), or record that the user blocked the bot. Not a failed turn.
        keep_undelivered(turn.services, chat_id=turn.inbound.chat_id, text=text, trace_id=turn.inbound.trace_id,
                         failed=failed)
        trace.get_current_span().set_attribute("reply.deferred", not failed.permanent)


async def throttle_stage(turn: Turn) -> None:
    inbound = turn.inbound
    if inbound.chat_type == "console" or turn.replay_dlq_id is not None:
        return
    decision = turn.services.throttle.hit(inbound.user_id, now_s=turn.services.clock.monotonic())
    trace.get_current_span().set_attribute("throttle.recent", decision.recent)
    if not decision.allowed:
        turn.outcome = "throttled"
        if decision.notify:
            await turn.send("notice", "You are sending messages faster than I can answer "
                            f"({turn.services.throttle.per_minute} per minute). Please wait a moment; "
                            "messages sent meanwhile are not answered.")
        raise TurnEnded("throttled")


# The order matters: nothing that costs money (llm) runs before the checks that can refuse
# for free (authorize, throttle, gate, budget), and the budget needs the context's size.
STAGES: list[tuple[str, Stage]] = [
    ("validate", validate_stage),
    ("authorize", authorize_stage),
    ("throttle", throttle_stage),
    ("ingest", ingest_stage),
    ("gate", gate_stage),
    ("context", context_stage),
    ("budget", budget_stage),
    ("llm", agent_stage),
    ("persist", persist_stage),
    ("reply", reply_stage),
]


class Pipeline:
    """Runs turns; one at a time per chat (history order), many chats concurrently."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._chat_locks: dict[int, asyncio.Lock] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.stages = list(STAGES)

    async def run_turn(self, inbound: InboundMessage, channel: Channel, *, late_of: str | None = None,
                       replay_dlq_id: int | None = None) -> Outcome:
        """Run one turn inside the current span (the caller opened the turn's root span)."""
        turn = Turn(inbound=inbound, channel=channel, services=self.services, guard=TurnGuard(inbound),
                    late_of=late_of, replay_dlq_id=replay_dlq_id)
        lock = self._chat_locks.setdefault(inbound.chat_id, asyncio.Lock())
        self._enter()
        try:
            async with lock:
                return await self._run_stages(turn)
        finally:
            if not lock.locked() and len(self._chat_locks) > 10_000:
                self._chat_locks.pop(inbound.chat_id, None)
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
