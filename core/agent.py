"""The agent call: streamed LLM attempts behind the circuit breaker and the retry policy,
bounded tool rounds (`update_hot_state`, `read_artifact`), and usage for every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from opentelemetry import trace

from core import failpoints
from core.context.tools import (
    MAX_TOOL_ROUNDS,
    READ_ARTIFACT_MAX_TOKENS,
    to_hot_state_write,
    validate_tool_arguments,
)
from core.contracts import (
    AgentRequest,
    ChatMessage,
    ContractViolation,
    Escalation,
    LLMResult,
    TokenUsage,
    ToolCall,
    UsageRecord,
    build,
)
from core.failures.retry import call_with_retry
from core.failures.taxonomy import GatewayError, Kind
from core.ingest import LONG_TEXT_TOKENS, store_text
from core.outcomes import to_gateway_error
from core.prompt import TOOLS, check_answer_contract, context_stage, make_room, tool_result_room
from core.store import transaction
from core.usage import cost_usd

if TYPE_CHECKING:
    from core.pipeline import Turn
    from core.services import Services

log = logging.getLogger(__name__)
TYPING_EVERY_S = 4.5  # Telegram shows "typing…" for 5 s
FIRST_TYPING_S = 0.8


async def gate_stage(turn: Turn) -> None:
    """Fail fast while the circuit is open: no context to assemble, no budget to check, no call.
    Only looks (the snapshot changes nothing): once the reset time has passed, the llm stage's
    `allow()` lets exactly one probe through."""
    services, settings = turn.services, turn.services.settings
    breaker = services.breakers.get(settings.llm_base_url, settings.llm_model)
    snapshot = breaker.snapshot(now_s=services.clock.monotonic())
    trace.get_current_span().set_attribute("circuit.state", snapshot.state)
    if snapshot.state == "open" and snapshot.retry_in_s:
        raise GatewayError(Kind.circuit_open, f"circuit {breaker.name} is open for {snapshot.retry_in_s:.1f} s more")


async def run_agent(turn: Turn) -> None:
    """Call the model until it answers, executing at most MAX_TOOL_ROUNDS rounds of tool calls."""
    typing = asyncio.create_task(_keep_typing(turn))
    turn.drafting = False
    try:
        for round_number in range(MAX_TOOL_ROUNDS + 1):
            offer_tools = round_number < MAX_TOOL_ROUNDS
            result = await call_llm(turn, tools=TOOLS if offer_tools else (), stream=True)
            if result.tool_calls and offer_tools:
                turn.messages.append(ChatMessage(role="assistant", content=result.text or None,
                                                 tool_calls=result.tool_calls))
                for call in result.tool_calls:
                    turn.messages.append(ChatMessage(role="tool", tool_call_id=call.id,
                                                     content=execute_tool(turn, call)))
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
    """One LLM call with retries (at most LLM_MAX_RETRIES), each attempt behind the breaker."""
    services, inbound, settings = turn.services, turn.inbound, turn.services.settings
    breaker = services.breakers.get(settings.llm_base_url, settings.llm_model)
    span = trace.get_current_span()

    async def on_delta(text: str) -> None:
        failpoints.hit("llm.during")
        turn.drafting = True
        await turn.send("draft", text)

    async def attempt(number: int, shrink_context: bool) -> LLMResult:
        if shrink_context:
            await _shrink_history(turn)
        now_s = services.clock.monotonic()
        if not breaker.allow(now_s=now_s):
            raise GatewayError(Kind.circuit_open, f"circuit {breaker.name} is open")
        request = build(AgentRequest, "agent_request_valid", "pipeline", producer="pipeline",
                        trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id,
                        model=settings.llm_model, messages=tuple(turn.messages), tools=tuple(tools),
                        max_output_tokens=settings.llm_max_output_tokens)
        turn.guard.check(request, producer="pipeline")
        try:
            # A late answer (a DLQ replay) is not streamed: nobody is watching it grow, and its
            # first sight should already say that it answers an earlier message.
            live = stream and turn.late_of is None
            result = await services.llm.complete(request, on_delta=on_delta if live else None)
            if result.producer != "llm":
                raise ContractViolation("role_exclusivity", field="producer", producer=result.producer,
                                        detail="only the LLM adapter makes LLM results")
            turn.guard.check(result, producer="llm")
            for call in result.tool_calls:
                validate_tool_arguments(call.name, call.arguments)
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                raise
            classified = to_gateway_error(error)
            if classified.kind == Kind.llm_malformed or classified.info.outage:
                transition = breaker.record_failure(now_s=services.clock.monotonic())
            else:
                breaker.record_neutral()
                transition = None
            record_attempt(services, turn, request, None, error=classified)
            _on_transition(services, turn, transition)
            raise classified from error
        transition = breaker.record_success(now_s=services.clock.monotonic())
        record_attempt(services, turn, request, result, error=None)
        _on_transition(services, turn, transition)
        hook = getattr(services, "on_llm_success", None)  # the provider answers: replay what waits
        if hook is not None and transition is None:
            hook()
        return result

    def on_retry(number: int, error: GatewayError, wait_s: float) -> None:
        span.add_event("retry", {"retry.attempt": number, "error.type": str(error.kind), "retry.wait_s": wait_s})
        log.info("retrying LLM call after %s (attempt %d, waiting %.2fs)", error.kind, number, wait_s)

    return await call_with_retry(attempt, policy=services.retry_policy, classify=to_gateway_error,
                                 on_retry=on_retry)


async def _shrink_history(turn: Turn) -> None:
    """The retry after context_length_exceeded: same turn, half the history budget."""
    from core.context.budget import HISTORY_SHRINK_FACTOR

    tail_start = len(turn.messages)
    for index, message in enumerate(turn.messages):
        if message.role == "user" and message.content == turn.user_text:
            tail_start = index + 1
    tail = turn.messages[tail_start:]
    turn.history_share *= HISTORY_SHRINK_FACTOR
    await context_stage(turn)
    turn.messages.extend(tail)


def _on_transition(services: Services, turn: Turn, transition) -> None:  # noqa: ANN001
    if transition is None:
        return
    settings = services.settings
    common = {"producer": "pipeline", "trace_id": turn.inbound.trace_id}
    if transition.to_state == "open" and transition.from_state == "closed":
        services.escalator.raise_alert(Escalation(
            key=f"circuit:{settings.llm_host}:{settings.llm_model}", kind="circuit_open", severity="critical",
            summary=f"The circuit to {settings.llm_host} ({settings.llm_model}) opened after "
                    f"{transition.consecutive_failures} consecutive failures; turns fail fast for "
                    f"{settings.breaker_reset_seconds:g} s at a time.",
            action="check the provider's status page and /status; messages wait in /dlq", **common),
            now=services.clock.now())
    elif transition.to_state == "closed":
        services.escalator.raise_alert(Escalation(
            key=f"circuit-closed:{settings.llm_host}:{settings.llm_model}", kind="circuit_closed", severity="info",
            summary=f"Recovered: the circuit to {settings.llm_host} ({settings.llm_model}) closed again.",
            action="queued messages are replayed automatically" if settings.dlq_auto_replay else "/replay all",
            **common), now=services.clock.now())
        hook = getattr(services, "on_circuit_closed", None)
        if hook is not None:
            hook()


def record_attempt(services: Services, turn: Turn, request: AgentRequest, result: LLMResult | None, *,
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
    record = UsageRecord(at=services.clock.now(), trace_id=inbound.trace_id, chat_id=inbound.chat_id,
                         user_id=inbound.user_id, model=request.model, usage=usage,
                         cost_usd=cost_usd(price=price, input_tokens=usage.input_tokens,
                                           output_tokens=usage.output_tokens),
                         wasted=error is not None)
    services.ledger.record(record)
    turn.tokens_spent += usage.total_tokens


def execute_tool(turn: Turn, call: ToolCall) -> str:
    """Run one tool call; a tool's own refusal (bad ref, no such item) goes back to the model.

    The result joins this turn's prompt, which must stay within the budget: the oldest history
    messages leave the prompt to make room (they stay stored), and an artifact slice is cut to
    what fits once they have (at most READ_ARTIFACT_MAX_TOKENS)."""
    services, inbound = turn.services, turn.inbound
    arguments = validate_tool_arguments(call.name, call.arguments)
    with services.tracer.start_as_current_span(f"tool {call.name}") as span:
        span.set_attribute("gen_ai.tool.name", call.name)
        if call.name == "update_hot_state":
            write = to_hot_state_write(call.arguments, trace_id=inbound.trace_id, chat_id=inbound.chat_id)
            turn.guard.check(write, producer=write.producer)
            state, notes = services.hot_state.apply(inbound.chat_id, write, now=services.clock.iso())
            return _fitted(turn, json.dumps({"ok": True, "notes": notes}))
        if call.name == "read_artifact":
            return _read_artifact(turn, arguments, span)
    raise ContractViolation("tool_known", field="tool_calls.function.name", producer="llm",
                            detail=f"unknown tool {call.name!r}")


# Below this many tokens of room a slice is not worth sending: the model is told the window is full.
MIN_SLICE_TOKENS = 32


def _fitted(turn: Turn, content: str) -> str:
    make_room(turn, turn.services.counter.count_message(content))
    return content


def _read_artifact(turn: Turn, arguments: dict, span: trace.Span) -> str:
    from core.context.artifacts import ArtifactCorrupt, ArtifactRefError

    services, chat_id = turn.services, turn.inbound.chat_id
    try:
        info = services.artifacts.resolve(chat_id, arguments["ref"])
    except ArtifactRefError as error:
        return _fitted(turn, json.dumps({"ok": False, "error": str(error)}))
    if info.tokens is None:
        return _fitted(turn, json.dumps({"ok": False, "error": f"{info.ref} ({info.media_type}) has no text to read"}))
    # The JSON envelope and its escaping cost a little more than the slice: measure, then trim.
    limit = min(arguments["max_tokens"], READ_ARTIFACT_MAX_TOKENS, tool_result_room(turn) - MIN_SLICE_TOKENS)
    for _ in range(4):
        if limit < MIN_SLICE_TOKENS:
            return _fitted(turn, json.dumps({
                "ok": False, "error": "this turn's context window is full: answer with what you have read, "
                                      "and read further in a later turn"}))
        try:
            piece = services.artifacts.read_text_slice(info, offset_tokens=arguments["offset"], max_tokens=limit)
        except ArtifactCorrupt as error:  # the operator's problem; the model is told it cannot be read
            log.error("artifact unreadable in chat %s: %s", chat_id, error)
            return _fitted(turn, json.dumps({"ok": False, "error": f"{error}: it cannot be read"}))
        content = json.dumps({"ok": True, "ref": info.ref, "offset": piece.offset, "next_offset": piece.next_offset,
                              "total_tokens": piece.total_tokens, "text": piece.text}, ensure_ascii=False)
        tokens = services.counter.count_message(content)
        excess = tokens - tool_result_room(turn)
        if excess <= 0:
            break
        limit -= excess
    else:
        return _fitted(turn, json.dumps({"ok": False, "error": "this turn's context window is full"}))
    make_room(turn, tokens)
    span.set_attributes({"artifact.ref": info.ref, "artifact.slice_offset": piece.offset,
                         "artifact.slice_tokens": tokens})
    return content


def persist_exchange(turn: Turn) -> None:
    """Both sides of the exchange join the history in one commit (never one without the other)."""
    with transaction(turn.services.db):
        _persist_exchange(turn)


def _persist_exchange(turn: Turn) -> None:
    """After a successful answer: both sides of the exchange join the history (counted once)."""
    services, inbound = turn.services, turn.inbound
    now = services.clock.iso()
    user_tokens = turn.user_tokens or services.counter.count_message(turn.user_text)
    services.history.append(chat_id=inbound.chat_id, role="user", content=turn.user_text, tokens=user_tokens,
                            trace_id=inbound.trace_id, update_id=inbound.update_id, now=now)
    stored = turn.answer
    answer_tokens = services.counter.count(turn.answer)
    if answer_tokens > LONG_TEXT_TOKENS:
        info = store_text(turn, turn.answer, label="long answer", kind="long_answer")
        stored = f"[My long answer ({answer_tokens} tokens) is stored as {info.ref}. Summary: {info.summary}]"
        answer_tokens = services.counter.count(stored)
    services.history.append(chat_id=inbound.chat_id, role="assistant", content=stored,
                            tokens=answer_tokens + 4, trace_id=inbound.trace_id, update_id=inbound.update_id,
                            now=now)
