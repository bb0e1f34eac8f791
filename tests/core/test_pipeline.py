"""The pipeline end to end in process: real storage, tracing and stages; scripted LLM and channel."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.contracts import InboundMessage
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline

OPERATOR = 900


async def turn(services, pipeline, channel, text: str, *, user_id: int = 100, chat_id: int = 100,
               update_id: int = 1) -> tuple[str, str]:
    with new_turn_span(services.tracer, "turn"):
        trace_id = current_trace_id()
        inbound = InboundMessage(update_id=update_id, trace_id=trace_id, chat_id=chat_id, chat_type="private",
                                 user_id=user_id, text=text, received_at=datetime.now(UTC))
        outcome = await pipeline.run_turn(inbound, channel)
    return outcome, trace_id


async def test_answer_and_history(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    llm.enqueue("Hello **there**")
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome == "replied"
    assert channel.texts("final") == ["Hello **there**"]
    llm.enqueue("second")
    await turn(services, pipeline, channel, "again", update_id=2)
    request = llm.requests[-1]
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert "<hot_state>" in request.messages[0].content and "</hot_state>" in request.messages[0].content


async def test_refused_user_costs_no_llm_call(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    outcome, _ = await turn(services, pipeline, channel, "hi", user_id=555, chat_id=555)
    assert outcome == "refused"
    assert llm.requests == []
    assert "555" in channel.texts("notice")[0]


async def test_malformed_llm_result_goes_to_dlq_with_ref(make_pipeline: MakePipeline) -> None:
    from core.contracts import ContractViolation

    services, pipeline, llm, channel = await make_pipeline()
    broken = ContractViolation("llm_response_has_choices", field="choices", producer="llm", detail="none")
    llm.enqueue(broken, broken)  # malformed output is retried once (models are not deterministic)
    outcome, trace_id = await turn(services, pipeline, channel, "hi")
    assert outcome == "dlq"
    error = channel.texts("error")[0]
    assert f"ref: {trace_id[:8]}" in error
    rows = await services.dlq.list("pending")
    assert len(rows) == 1 and rows[0].error_kind == "llm_malformed" and rows[0].inbound.text == "hi"
    llm.enqueue("fine now")
    outcome, _ = await turn(services, pipeline, channel, "next", update_id=2)
    assert outcome == "replied"


async def test_tool_rounds_update_hot_state(make_pipeline: MakePipeline) -> None:
    from core.contracts import ToolCall

    services, pipeline, llm, channel = await make_pipeline()
    llm.enqueue((ToolCall(id="c1", name="update_hot_state",
                          arguments={"set_objective": "plan a trip", "add": [{"section": "facts", "text": "likes trains"}]}),),
                "Noted your objective.")
    outcome, _ = await turn(services, pipeline, channel, "I want to plan a trip; I like trains")
    assert outcome == "replied"
    state = await services.hot_state.load(100)
    assert state.objective == "plan a trip"
    assert any(i.text == "likes trains" for i in state.items)
    second = llm.requests[1]
    assert [m.role for m in second.messages][-2:] == ["assistant", "tool"]


@pytest.mark.parametrize("budget", [1000])
async def test_budget_refusal_makes_no_llm_call(make_pipeline: MakePipeline, budget: int) -> None:
    services, pipeline, llm, channel = await make_pipeline(user_daily_token_budget=budget)
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome == "notice"
    assert llm.requests == []
    assert "daily" in channel.texts("error")[0].lower()


async def test_the_runtime_hooks_are_declared_and_called(make_pipeline: MakePipeline) -> None:
    from dataclasses import fields

    from core.failures.taxonomy import GatewayError, Kind
    from core.services import Services

    declared = {f.name for f in fields(Services)}
    assert {"on_llm_success", "on_circuit_closed", "on_storage_failure"} <= declared
    services, pipeline, llm, channel = await make_pipeline(breaker_failure_threshold=1, breaker_reset_seconds=0.01)
    calls: list[str] = []
    services.on_llm_success = lambda: calls.append("success")
    services.on_circuit_closed = lambda: calls.append("closed")
    llm.enqueue("fine")
    await turn(services, pipeline, channel, "hi")
    assert calls == ["success"]  # the provider answers: whatever waits for it may go
    llm.enqueue(GatewayError(Kind.llm_server, "HTTP 500", status_code=500))
    assert (await turn(services, pipeline, channel, "again", update_id=2))[0] == "dlq"  # opens the circuit
    await asyncio.sleep(0.02)
    llm.enqueue("back")
    assert (await turn(services, pipeline, channel, "later", update_id=3))[0] == "replied"
    assert calls == ["success", "closed"]  # the probe closed the circuit: the closing hook, not the success one
