"""The llm stage's fallbacks in-process: which failures they cover, and the bounded retry budget."""

from __future__ import annotations

from core.failures.taxonomy import GatewayError, Kind
from tests.core.fakes import MakePipeline
from tests.core.test_pipeline import turn


def models_of(llm) -> list[str]:
    return [request.model for request in llm.requests]


async def test_out_of_quota_goes_straight_to_the_fallback(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(llm_fallback_models="gpt-4o", llm_max_retries=2)
    llm.enqueue(GatewayError(Kind.llm_quota, "insufficient_quota"), "covered")
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome == "replied"
    assert models_of(llm) == ["gpt-4o-mini", "gpt-4o"]  # quota is not retried on the same model
    assert channel.texts("final") == ["covered\n\n— answered by gpt-4o (gpt-4o-mini is unavailable: out of quota)"]
    assert await services.dlq.depth() == 0


async def test_a_failure_another_model_would_not_fix_is_not_passed_on(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(llm_fallback_models="gpt-4o")
    llm.enqueue(GatewayError(Kind.llm_auth, "invalid_api_key"))
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome != "replied"
    assert models_of(llm) == ["gpt-4o-mini"]


async def test_every_model_failing_ends_the_turn_as_before(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(llm_fallback_models="gpt-4o,o3", llm_max_retries=1,
                                                     breaker_failure_threshold=10)
    llm.enqueue(*(GatewayError(Kind.llm_server, "boom") for _ in range(4)))
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome == "dlq"
    assert models_of(llm) == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o", "o3"]  # retries on the chat's model only
    [entry] = await services.dlq.list()
    assert entry.error_kind == "llm_server"
    assert any("ref:" in text for text in channel.texts("error"))


async def test_a_tool_round_after_a_fallback_answer_stays_with_the_fallback(make_pipeline: MakePipeline) -> None:
    from core.contracts import ToolCall

    services, pipeline, llm, channel = await make_pipeline(llm_fallback_models="gpt-4o", llm_max_retries=0)
    call = ToolCall(id="c1", name="update_hot_state", arguments={"add": [{"section": "facts", "text": "x"}]})
    llm.enqueue(GatewayError(Kind.llm_server, "boom"), (call,), "done")
    outcome, _ = await turn(services, pipeline, channel, "hi")
    assert outcome == "replied"
    assert models_of(llm) == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]
    assert channel.texts("final")[-1].endswith("(gpt-4o-mini is unavailable: server error)")
