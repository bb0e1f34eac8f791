"""The context stages in process: history archived in batches behind one hot-state link, tool
results kept within the prompt budget, the overflow retry carrying less history, and the
fail-closed refusal worded for people."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.context.budget import plan_context
from core.context.tokens import REPLY_PRIMING_TOKENS
from core.contracts import AgentRequest, InboundMessage, ToolCall
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline

USER = 100
FILLER = " ".join(["lorem ipsum dolor sit amet consectetur"] * 12)


@pytest.fixture
def make(make_pipeline: MakePipeline) -> MakePipeline:
    async def build(**overrides: object):  # noqa: ANN202
        return await make_pipeline(tracing=False, **{"user_daily_token_budget": 0, "user_messages_per_minute": 0,
                                               **overrides})
    return build


async def say(services, pipeline, channel, text: str, *, update_id: int, chat_id: int = USER) -> str:
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=update_id, trace_id=current_trace_id() or "1" * 32, chat_id=chat_id,
                                 chat_type="private", user_id=chat_id, text=text, received_at=datetime.now(UTC))
        return await pipeline.run_turn(inbound, channel)


def request_tokens(services, request: AgentRequest) -> int:
    """What the budget promises to bound: every message as sent, priming, and the tool specs."""
    counter = services.counter
    total = REPLY_PRIMING_TOKENS
    for message in request.messages:
        wire = message.to_openai()
        total += counter.count_message(wire["content"] or "")
        if "tool_calls" in wire:
            total += counter.count(json.dumps(wire["tool_calls"]))
    if request.tools:
        total += counter.count(json.dumps([t.to_openai() for t in request.tools]))
    return total


def test_plan_context_caps_history_tokens() -> None:
    args = dict(system_tokens=100, current_tokens=50, tools_tokens=30, history_tokens_newest_first=[100, 100, 100],
                context_tokens=1000, reserve_output_tokens=200)
    assert plan_context(**args).history_kept == 3
    assert plan_context(**args, max_history_tokens=150).history_kept == 1
    assert plan_context(**args, max_history_tokens=0).history_kept == 0


async def test_long_conversation_archives_in_batches_behind_one_link(make: MakePipeline) -> None:
    services, pipeline, llm, channel = await make(llm_context_tokens=2048, llm_max_output_tokens=256)
    from core.contracts import HotStateWrite

    await services.hot_state.apply(USER, HotStateWrite(producer="pipeline", source="user", trace_id="2" * 32, chat_id=USER,
                                                 add=(("facts", "my cat is called Miso"),)), now="2026-01-01T00:00:00")
    turns = 80
    for number in range(turns):
        assert await say(services, pipeline, channel, f"msg {number:03d}: {FILLER}", update_id=number + 1) == "replied"
    budget = 2048 - 256
    assert max(request_tokens(services, r) for r in llm.requests) <= budget
    state = await services.hot_state.load(USER)
    links = [i for i in state.artifacts if " history_archive " in i.text]
    assert len(links) == 1, "one rolling history link, not one per archive"
    assert any(i.text == "my cat is called Miso" for i in state.items)
    archives = services.db.conn.execute("SELECT COUNT(*) FROM artifact_links WHERE kind = 'history_archive'").fetchone()[0]
    assert 2 <= archives <= turns // 3
    # Follow the chain: every message that left the prompt is in an archive.
    text, ref, seen = "", links[0].text.split(" ", 1)[0], set()
    while ref and ref not in seen:
        seen.add(ref)
        chunk = await services.artifacts.read_text(await services.artifacts.resolve(USER, ref))
        text += chunk
        earlier = re.search(r"Earlier history: (artifact://[0-9a-f]+)", chunk)
        ref = earlier.group(1) if earlier else None
    assert len(seen) == archives
    in_prompt = " ".join(m.content or "" for m in llm.requests[-1].messages)
    assert all(f"msg {n:03d}:" in text or f"msg {n:03d}:" in in_prompt for n in range(turns))
    # Only a bounded part of the conversation stays active.
    assert await services.history.count_active(USER) < 20


async def test_read_artifact_slices_fit_a_small_window(make: MakePipeline) -> None:
    services, pipeline, llm, channel = await make(llm_context_tokens=3072, llm_max_output_tokens=256)
    for number in range(12):  # fill the window with history first
        await say(services, pipeline, channel, f"msg {number:03d}: {FILLER}", update_id=number + 1)
    document = "\n".join(f"Line {n:05d}: the quick brown fox jumps over the lazy dog." for n in range(4000))
    channel.files["doc1"] = document.encode()
    from core.contracts import Attachment

    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=50, trace_id=current_trace_id() or "3" * 32, chat_id=USER,
                                 chat_type="private", user_id=USER, text="", received_at=datetime.now(UTC),
                                 attachment=Attachment(file_id="doc1", file_name="lines.txt", mime_type="text/plain",
                                                       size_bytes=len(document)))
        assert await pipeline.run_turn(inbound, channel) == "replied"
    ref = re.search(r"artifact://[0-9a-f]{16}", llm.requests[-1].messages[-1].content).group(0)
    calls = [ToolCall(id=f"c{i}", name="read_artifact", arguments={"ref": ref, "offset": 0}) for i in range(3)]
    llm.enqueue((calls[0],), (calls[1], calls[2]), "done")
    before = len(llm.requests)
    assert await say(services, pipeline, channel, "read it all", update_id=51) == "replied"
    rounds = llm.requests[before:]
    assert len(rounds) == 3
    budget = 3072 - 256
    assert all(request_tokens(services, r) <= budget for r in rounds), [request_tokens(services, r) for r in rounds]
    results = [json.loads(m.content) for m in rounds[-1].messages if m.role == "tool"]
    assert results[0]["ok"] is True and document.startswith(results[0]["text"])
    assert 0 < services.counter.count(results[0]["text"]) <= 2000
    assert results[-1]["ok"] is False and "context window is full" in results[-1]["error"]
    # History made room in this turn's prompt only: the next turn has it back.
    assert len(rounds[-1].messages) < len(rounds[0].messages) + 3
    await say(services, pipeline, channel, "thanks", update_id=52)
    assert len(llm.requests[-1].messages) > 4


async def test_overflow_retry_carries_at_most_half_the_history(make: MakePipeline) -> None:
    from core.failures.taxonomy import GatewayError, Kind

    services, pipeline, llm, channel = await make()  # a wide window: halving it would change nothing
    for number in range(6):
        await say(services, pipeline, channel, f"note {number}", update_id=number + 1)
    overflow = GatewayError(Kind.llm_context_overflow, "context_length_exceeded")
    llm.enqueue(overflow, "fine")
    assert await say(services, pipeline, channel, "summarise", update_id=10) == "replied"
    failed, retried = llm.requests[-2:]
    assert len(failed.messages) == 14 and len(retried.messages) < len(failed.messages)
    assert retried.messages[-1].content == "summarise"
    llm.enqueue(overflow, overflow)
    assert await say(services, pipeline, channel, "again", update_id=11) != "replied"
    assert "too long for the model" in channel.texts("error")[-1]


async def test_a_prompt_that_cannot_fit_is_refused_in_words(make: MakePipeline) -> None:
    services, pipeline, llm, channel = await make(llm_context_tokens=1024, llm_max_output_tokens=16)
    outcome = await say(services, pipeline, channel, " ".join(f"word{n}" for n in range(700)), update_id=1)
    assert outcome == "notice" and llm.requests == []
    reply = channel.texts("error")[-1]
    assert "too long for the model" in reply and "ref: " in reply and "context too large" not in reply


async def test_a_missing_artifact_file_is_reported_to_the_model(make: MakePipeline) -> None:
    services, pipeline, llm, channel = await make()
    await say(services, pipeline, channel, "x " * 3000, update_id=1)  # long: stored as an artifact
    ref = re.search(r"artifact://[0-9a-f]{16}", llm.requests[-1].messages[-1].content).group(0)
    services.artifacts.path_for((await services.artifacts.resolve(USER, ref)).sha256).unlink()
    llm.enqueue((ToolCall(id="c1", name="read_artifact", arguments={"ref": ref}),), "sorry")
    assert await say(services, pipeline, channel, "read it", update_id=2) == "replied"
    result = json.loads([m for m in llm.requests[-1].messages if m.role == "tool"][-1].content)
    assert result["ok"] is False and "missing" in result["error"]


async def test_prompts_from_cached_history_equal_prompts_read_cold(make: MakePipeline, tmp_path: Path) -> None:
    """History keeps each chat's recent messages, validated once as ChatMessages, in memory: a
    conversation (archived in batches, set aside by /new, a tool round making room by dropping
    history from one prompt) gets the very prompts it gets when every turn reads the table."""
    from core.contracts import Attachment
    from core.store import History

    document = "\n".join(f"Line {n:05d}: the quick brown fox jumps over the lazy dog." for n in range(2000))
    runs = []
    for name, cache_chats in (("warm", 256), ("cold", 0)):
        services, pipeline, llm, channel = await make(path=tmp_path / name, llm_context_tokens=2048, llm_max_output_tokens=256)
        services.history = History(services.db, cache_chats=cache_chats)
        channel.files["doc1"] = document.encode()
        for number in range(40):
            chat_id = USER if number % 4 else USER + 1
            if number == 25:
                await services.history.start_new(USER)
            if number == 30:
                with new_turn_span(services.tracer, "turn"):
                    inbound = InboundMessage(
                        update_id=1000, trace_id=current_trace_id() or "3" * 32, chat_id=USER, chat_type="private",
                        user_id=USER, text="", received_at=datetime.now(UTC),
                        attachment=Attachment(file_id="doc1", file_name="lines.txt", mime_type="text/plain",
                                              size_bytes=len(document)))
                    assert await pipeline.run_turn(inbound, channel) == "replied"
                ref = re.search(r"artifact://[0-9a-f]{16}", llm.requests[-1].messages[-1].content).group(0)
                llm.enqueue((ToolCall(id="c1", name="read_artifact", arguments={"ref": ref, "offset": 0}),), "done")
            text = f"msg {number:03d}: {FILLER}"
            assert await say(services, pipeline, channel, text, update_id=number + 1, chat_id=chat_id) == "replied"
        runs.append((services, llm))
    (warm, warm_llm), (cold, cold_llm) = runs
    assert [r.messages for r in warm_llm.requests] == [r.messages for r in cold_llm.requests]
    [tool_round] = [r for r in warm_llm.requests if r.messages[-1].role == "tool"]
    before = warm_llm.requests[warm_llm.requests.index(tool_round) - 1]
    assert len(tool_round.messages) < len(before.messages) + 2  # history made room for the result
    assert warm.history._windows and not cold.history._windows
    # The warm run reused the ChatMessages of the messages still in the prompt from turn to turn.
    previous, last = warm_llm.requests[-3].messages, warm_llm.requests[-1].messages
    assert any(message is earlier for message in last[1:-1] for earlier in previous[1:-1])
    await warm.close()
    await cold.close()
