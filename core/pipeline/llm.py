"""llm: the agent call. Streamed attempts behind the circuit breaker and the retry policy (at
most LLM_MAX_RETRIES), bounded tool rounds (`update_hot_state`, `read_artifact`), and a usage
row for every attempt. A tool call the model got wrong is answered to the model, which gets its
next round; only an answer that cannot be read at all is `llm_malformed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from opentelemetry import trace

from core import failpoints
from core.context.tool_calls import execute_tool
from core.context.tools import MAX_TOOL_ROUNDS, TOOLS
from core.contracts import (
    AgentRequest,
    ChatMessage,
    ContractViolation,
    Escalation,
    LLMResult,
    ReplyEvent,
    StreamedText,
    TokenUsage,
    UsageRecord,
    build,
)
from core.control import end_stopped, until_stopped
from core.failures.classify import to_gateway_error
from core.failures.fallback import fallback_note, fallback_reason
from core.failures.retry import RetryPolicy, call_with_retry
from core.failures.taxonomy import GatewayError, Kind
from core.ports import DeltaSink
from core.turn import Turn, plan_prompt
from core.usage_prices import cost_usd

if TYPE_CHECKING:
    from core.failures.breaker import Transition
    from core.services import Services

log = logging.getLogger(__name__)
TYPING_EVERY_S = 4.5  # Telegram shows "typing…" for 5 s
FIRST_TYPING_S = 0.8


async def run(turn: Turn) -> None:
    """Call the model until it answers, executing at most MAX_TOOL_ROUNDS rounds of tool calls."""
    typing = asyncio.create_task(_keep_typing(turn))
    turn.drafting = False
    try:
        for round_number in range(MAX_TOOL_ROUNDS + 1):
            offer_tools = round_number < MAX_TOOL_ROUNDS
            result = await until_stopped(turn.stop, call_llm(turn, tools=TOOLS if offer_tools else (), stream=True))
            if result is None:  # /stop: the call was cancelled; the turn goes on with what streamed
                await end_stopped(turn)
                return
            if result.tool_calls and offer_tools:
                turn.messages.append(ChatMessage(role="assistant", content=result.text or None,
                                                 tool_calls=result.tool_calls))
                for call in result.tool_calls:
                    turn.messages.append(ChatMessage(role="tool", tool_call_id=call.id,
                                                     content=await execute_tool(turn, call)))
                if turn.viewed_images:  # view_image: the pictures ride along for the rest of the turn
                    turn.messages.append(ChatMessage(role="user", content="[The pictures view_image asked for.]",
                                                     images=tuple(turn.viewed_images)))
                    turn.viewed_images.clear()
                continue
            answer = result.text
            if result.finish_reason == "content_filter" and not answer.strip():
                answer = "The model declined to answer this (its content filter stopped it)."
            check_answer_contract(answer)
            turn.answer = answer
            return
    finally:
        typing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await typing


async def _keep_typing(turn: Turn) -> None:
    """Show "typing…" while the agent works, from FIRST_TYPING_S on: an answer that starts streaming
    sooner shows itself, and a Bot API call per turn is saved (Telegram allows 30 a second)."""
    await asyncio.sleep(FIRST_TYPING_S)
    while not turn.drafting:
        with contextlib.suppress(Exception):
            await turn.send("typing")
        await asyncio.sleep(TYPING_EVERY_S)


async def call_llm(turn: Turn, *, tools: tuple, stream: bool) -> LLMResult:
    """The chat's model with retries (at most LLM_MAX_RETRIES), then each fallback once, in order,
    while the failure is one a fallback may answer (core/failures/fallback.py). When every model
    fails, the chat's model's error is raised: the turn fails as it would without fallbacks."""
    services = turn.services
    chat_model = turn.model or services.settings.llm_model
    order = services.models.order_for(turn.answered_by or chat_model)
    first: tuple[GatewayError, str, str] | None = None
    for index, model in enumerate(order):
        policy = services.retry_policy if model == chat_model else replace(services.retry_policy, max_retries=0)
        try:
            result = await _call_model(turn, model, tools=tools, stream=stream, policy=policy)
        except GatewayError as error:
            reason = fallback_reason(error)
            if first is None:
                first = (error, model, reason or "")
            if reason is None or index == len(order) - 1:
                raise first[0] from first[0].__cause__
            trace.get_current_span().add_event("fallback", {"gen_ai.request.model": model, "error.type": str(error.kind)})
            log.info("model %s failed (%s); trying fallback %s", model, error.kind, order[index + 1])
            continue
        if model != chat_model:
            turn.answered_by = model
            if first is not None and not turn.fallback_note:
                turn.fallback_note = fallback_note(answered_by=model, failed_model=first[1], reason=first[2])
        return result
    raise AssertionError("unreachable: the order holds the chat's model")


async def _call_model(turn: Turn, model: str, *, tools: tuple, stream: bool, policy: RetryPolicy) -> LLMResult:
    """One model's call with retries (at most `policy.max_retries`), each attempt behind its breaker."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    breaker = services.breakers.get(services.models.endpoint(model).base_url, model)
    span = trace.get_current_span()

    async def attempt(number: int, shrink_context: bool) -> LLMResult:
        if shrink_context:
            await plan_prompt(turn, smaller=True)
        now_s = services.clock.monotonic()
        if not breaker.allow(now_s=now_s):
            raise GatewayError(Kind.circuit_open, f"circuit {breaker.name} is open")
        request = build(AgentRequest, "agent_request_valid", "pipeline", producer="pipeline",
                        trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id,
                        model=model, messages=tuple(turn.messages), tools=tuple(tools),
                        max_output_tokens=settings.llm_max_output_tokens)
        turn.guard.check(request, producer="pipeline")
        turn.llm_request, turn.streamed = request, None
        try:
            # A late answer (a DLQ replay) is not streamed: nobody is watching it grow, and its
            # first sight should already say that it answers an earlier message.
            live = stream and turn.late_of is None
            result = await services.llm.complete(request, on_delta=draft_sink(turn) if live else None)
            if result.producer != "llm":
                raise ContractViolation("role_exclusivity", field="producer", producer=result.producer,
                                        detail="only the LLM adapter makes LLM results")
            turn.guard.check(result, producer="llm")
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                breaker.record_neutral()  # a stopped call says nothing of the provider (frees a probe)
                raise
            classified = to_gateway_error(error)
            if classified.kind == Kind.llm_malformed or classified.info.outage:
                transition = breaker.record_failure(now_s=services.clock.monotonic())
            else:
                breaker.record_neutral()
                transition = None
            await record_attempt(services, turn, request, None, error=classified)
            await _on_transition(services, turn, transition, model=model)
            raise classified from error
        transition = breaker.record_success(now_s=services.clock.monotonic())
        await record_attempt(services, turn, request, result, error=None)
        await _on_transition(services, turn, transition, model=model)
        if services.on_llm_success is not None and transition is None:
            services.on_llm_success()  # the provider answers: replay what waits
        return result

    def on_retry(number: int, error: GatewayError, wait_s: float) -> None:
        span.add_event("retry", {"retry.attempt": number, "error.type": str(error.kind), "retry.wait_s": wait_s})
        log.info("retrying LLM call after %s (attempt %d, waiting %.2fs)", error.kind, number, wait_s)

    return await call_with_retry(attempt, policy=policy, classify=to_gateway_error,
                                 on_retry=on_retry)


def draft_sink(turn: Turn) -> DeltaSink:
    """One attempt's streamed answer as a draft: one event holding the answer by reference, delivered
    again per chunk. Per chunk this is an append; the text is joined only when the channel reads
    it for a preview. A retried attempt gets a new sink, so its draft starts over."""
    streamed = turn.streamed = StreamedText()
    event = ReplyEvent(kind="draft", trace_id=turn.inbound.trace_id, chat_id=turn.inbound.chat_id,
                       reply_to_message_id=turn.inbound.message_id, streamed=streamed)

    async def on_delta(delta: str) -> None:
        failpoints.hit("llm.during")
        turn.drafting = True
        streamed.append(delta)
        await turn.channel.deliver(event)

    return on_delta


async def _on_transition(services: Services, turn: Turn, transition: Transition | None, *, model: str) -> None:
    if transition is None:
        return
    settings = services.settings
    host = services.models.endpoint(model).host
    common = {"producer": "pipeline", "trace_id": turn.inbound.trace_id}
    if transition.to_state == "open" and transition.from_state == "closed":
        await services.escalator.raise_alert(Escalation(
            key=f"circuit:{host}:{model}", kind="circuit_open", severity="critical",
            summary=f"The circuit to {host} ({model}) opened after "
                    f"{transition.consecutive_failures} consecutive failures; turns fail fast for "
                    f"{settings.breaker_reset_seconds:g} s at a time.",
            action="check the provider's status page and /status; messages wait in /dlq", **common),
            now=services.clock.now())
    elif transition.to_state == "closed":
        await services.escalator.raise_alert(Escalation(
            key=f"circuit-closed:{host}:{model}", kind="circuit_closed", severity="info",
            summary=f"Recovered: the circuit to {host} ({model}) closed again.",
            action="queued messages are replayed automatically" if settings.dlq_auto_replay else "/replay all",
            **common), now=services.clock.now())
        if services.on_circuit_closed is not None:
            services.on_circuit_closed()


async def record_attempt(services: Services, turn: Turn, request: AgentRequest, result: LLMResult | None, *,
                   error: GatewayError | None) -> None:
    """Every attempt writes a usage row; a failed one is estimated and marked wasted."""
    inbound = turn.inbound
    if result is not None:
        usage = result.usage
    else:
        input_tokens = turn.plan.total_tokens if turn.drafting and turn.plan is not None else 0
        # Refused before anything streamed: providers bill nothing, a known zero, not an estimate.
        usage = TokenUsage(input_tokens=input_tokens, output_tokens=0, total_tokens=input_tokens,
                           estimated=input_tokens > 0)
    price = services.prices.price_for(request.model)
    # Built like any record that crosses into storage: a price table gone wrong is named here.
    record = build(UsageRecord, "usage_record_valid", "pipeline", at=services.clock.now(),
                   trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id,
                   model=request.model, usage=usage,
                   cost_usd=cost_usd(price=price, input_tokens=usage.input_tokens,
                                     output_tokens=usage.output_tokens),
                   wasted=error is not None)
    await services.ledger.record(record)
    turn.tokens_spent += usage.total_tokens


def check_answer_contract(text: str) -> None:
    if not text.strip():
        raise ContractViolation("llm_answer_not_empty", field="choices[0].message.content", producer="llm",
                                detail="the model returned an empty answer")
