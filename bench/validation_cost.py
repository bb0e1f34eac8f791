"""Benchmark: what validating one turn's contracts costs, end to end.

Not a test: it prints figures. One "turn" here is every contract a normal answered turn makes
and checks, in the order the pipeline does it (no I/O, no LLM, just the validation):

  channel    InboundMessage built by the Telegram layer (`build`, strict, named violations)
  validate   the consumer re-validation (`model_validate` of its dump) and the TurnGuard
  context    ContextPlan (counts_sane, hot_state_within_cap, prompt_within_budget) and the
             chat message list: system + hot state, 18 history messages, the user message
  request    AgentRequest over those 20 messages (message_list_well_formed) + TurnGuard
  result     LLMResult with its TokenUsage, as the LLM adapter builds it + role and TurnGuard checks
  reply      ReplyEvents: one typing action, three streamed drafts, the final answer
  usage      the UsageRecord of the attempt

Each step is timed over many iterations with `time.perf_counter` (best of several rounds, so
that other processes on the machine disturb the figure as little as possible).

    .venv/bin/python bench/validation_cost.py [--iterations 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.contracts import (  # noqa: E402
    AgentRequest,
    ChatMessage,
    ContextPlan,
    ContractViolation,
    InboundMessage,
    LLMResult,
    ReplyEvent,
    TokenUsage,
    TurnGuard,
    UsageRecord,
    build,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CHAT_ID = USER_ID = 123456789
SYSTEM_PROMPT = "You are a helpful assistant in a Telegram chat. Answer briefly and cite artifacts. " * 12
HOT_STATE = ("<hot_state>\nobjective: plan the trip to Lisbon\n[1] decisions: fly on Friday (user)\n"
             "[2] facts: budget is 1500 EUR (agent)\n[3] open_questions: which hotel? (agent)\n</hot_state>")
HISTORY = [("user" if i % 2 == 0 else "assistant", f"message {i}: " + "some realistic chat text " * (6 + i % 5))
           for i in range(18)]
USER_TEXT = "Can you compare the two hotels we talked about and tell me which one is closer to the centre?"
ANSWER = "The first one is closer: about 600 m from Rossio. " * 8


def channel_step() -> InboundMessage:
    return build(InboundMessage, "inbound_message_valid", "channel", update_id=987654321, trace_id=TRACE,
                 chat_id=CHAT_ID, chat_type="private", user_id=USER_ID, user_name="alice", message_id=4242,
                 text=USER_TEXT, attachment=None, received_at=datetime.now(UTC))


def validate_step(inbound: InboundMessage) -> TurnGuard:
    guard = TurnGuard(inbound)
    checked = InboundMessage.model_validate(inbound.model_dump(), strict=False)
    guard.check(checked, producer=checked.producer)
    return guard


def context_step() -> tuple[ContextPlan, list[ChatMessage]]:
    plan = build(ContextPlan, "context_plan_sane", "pipeline", system_tokens=420, hot_state_tokens=60,
                 hot_state_cap=1000, history_tokens=1530, history_kept=18, history_dropped=4, current_tokens=24,
                 tools_tokens=210, artifact_count=2, total_tokens=420 + 1530 + 24 + 210, budget_tokens=126_000)
    messages = [ChatMessage(role="system", content=f"{SYSTEM_PROMPT}\n\n{HOT_STATE}"),
                *(ChatMessage(role=role, content=content) for role, content in HISTORY),
                ChatMessage(role="user", content=USER_TEXT)]
    return plan, messages


def request_step(guard: TurnGuard, messages: list[ChatMessage]) -> AgentRequest:
    request = build(AgentRequest, "agent_request_valid", "pipeline", producer="pipeline", trace_id=TRACE,
                    chat_id=CHAT_ID, user_id=USER_ID, model="gpt-4o-mini", messages=tuple(messages), tools=(),
                    max_output_tokens=1024)
    guard.check(request, producer="pipeline")
    return request


def result_step(guard: TurnGuard) -> LLMResult:
    usage = TokenUsage(input_tokens=2184, output_tokens=96, total_tokens=2280)
    result = build(LLMResult, "llm_result_valid", "llm", producer="llm", trace_id=TRACE, text=ANSWER, tool_calls=(),
                   finish_reason="stop", usage=usage, model="gpt-4o-mini-2024-07-18", latency_s=1.234)
    if result.producer != "llm":
        raise ContractViolation("role_exclusivity", field="producer", producer=result.producer)
    guard.check(result, producer="llm")
    return result


def reply_step() -> list[ReplyEvent]:
    events = [ReplyEvent(kind="typing", trace_id=TRACE, chat_id=CHAT_ID, reply_to_message_id=4242)]
    events += [ReplyEvent(kind="draft", trace_id=TRACE, chat_id=CHAT_ID, text=ANSWER[: n * 100],
                          reply_to_message_id=4242) for n in (1, 2, 3)]
    events.append(ReplyEvent(kind="final", trace_id=TRACE, chat_id=CHAT_ID, text=ANSWER, reply_to_message_id=4242))
    return events


def usage_step(result: LLMResult) -> UsageRecord:
    return UsageRecord(at=datetime.now(UTC), trace_id=TRACE, chat_id=CHAT_ID, user_id=USER_ID, model=result.model,
                       usage=result.usage, cost_usd=0.000385, wasted=False)


def one_turn() -> None:
    inbound = channel_step()
    guard = validate_step(inbound)
    _, messages = context_step()
    request_step(guard, messages)
    result = result_step(guard)
    reply_step()
    usage_step(result)


def best_us(step: Callable[[], object], *, iterations: int, rounds: int) -> float:
    """Microseconds per call: the best round's average (the least disturbed by other processes)."""
    for _ in range(min(iterations, 500)):  # warm up caches and pydantic's validators
        step()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(iterations):
            step()
        best = min(best, (time.perf_counter() - started) / iterations)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    inbound = channel_step()
    guard = TurnGuard(inbound)
    _, messages = context_step()
    result = result_step(guard)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("channel   InboundMessage", channel_step),
        ("validate  re-validation + TurnGuard", lambda: validate_step(inbound)),
        ("context   ContextPlan + 20 ChatMessages", context_step),
        ("request   AgentRequest (20 messages) + TurnGuard", lambda: request_step(guard, messages)),
        ("result    LLMResult + TokenUsage + checks", lambda: result_step(guard)),
        ("reply     5 ReplyEvents", reply_step),
        ("usage     UsageRecord", lambda: usage_step(result)),
    ]
    print(f"validation cost per turn ({args.iterations} iterations, best of {args.rounds} rounds)")
    parts = 0.0
    for name, step in steps:
        cost = best_us(step, iterations=args.iterations, rounds=args.rounds)
        parts += cost
        print(f"  {name:<50} {cost:8.1f} us")
    total = best_us(one_turn, iterations=args.iterations, rounds=args.rounds)
    print(f"  {'sum of the steps':<50} {parts:8.1f} us")
    print(f"one turn, end to end: {total:.1f} us ({total / 1000:.3f} ms; budget: well under 1 ms)")


if __name__ == "__main__":
    main()
