"""A streamed answer costs core an append per chunk: the text is joined when a channel reads it
(core/contracts/streamed.py), so full joins are bounded by the previews shown, not by the chunks."""

from __future__ import annotations

from datetime import UTC, datetime

from core.contracts import AgentRequest, InboundMessage, LLMResult, ReplyEvent, StreamedText, TokenUsage
from core.failures.taxonomy import GatewayError, Kind
from core.ports import DeltaSink
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline

TRACE = "ab" * 16


def test_joins_happen_on_reads_with_something_new() -> None:
    streamed = StreamedText()
    assert streamed.text == "" and streamed.joins == 0
    for piece in ("Hel", "lo", ", ", "world"):
        streamed.append(piece)
    assert streamed.joins == 0  # appending joins nothing
    assert str(streamed) == "Hello, world" and streamed.joins == 1
    assert streamed.text == "Hello, world" and streamed.joins == 1  # nothing new: no second join
    streamed.append("!")
    assert streamed.text == "Hello, world!" and streamed.joins == 2
    assert "Hello" not in repr(streamed)  # a log line shows the size, not the answer


def test_a_draft_event_reads_its_streamed_text_and_dumps_without_it() -> None:
    streamed = StreamedText()
    event = ReplyEvent(kind="draft", trace_id=TRACE, chat_id=1, streamed=streamed)
    streamed.append("grows")
    assert event.text_now() == "grows"
    assert "streamed" not in event.model_dump()
    assert ReplyEvent(kind="final", trace_id=TRACE, chat_id=1, text="done").text_now() == "done"


class PreviewingChannel:
    """Reads the draft's text on every `every`-th delivery, as a channel pacing its edits would."""

    def __init__(self, every: int) -> None:
        self.every, self.deliveries, self.previews = every, 0, []
        self.events: list[ReplyEvent] = []

    async def deliver(self, event: ReplyEvent) -> None:
        self.events.append(event)
        self.deliveries += 1
        if event.kind == "draft" and self.deliveries % self.every == 0:
            self.previews.append(event.text_now())


class ChunkingLLM:
    """An LLM port that streams `answer` in `size`-character deltas, as a provider does."""

    model = "gpt-4o-mini"

    def __init__(self, answer: str, size: int) -> None:
        self.answer, self.size = answer, size

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        assert on_delta is not None
        for start in range(0, len(self.answer), self.size):
            await on_delta(self.answer[start:start + self.size])
        return LLMResult(producer="llm", trace_id=request.trace_id, text=self.answer, finish_reason="stop",
                         usage=TokenUsage(input_tokens=100, output_tokens=10, total_tokens=110), model=self.model)


async def test_full_joins_are_bounded_by_the_previews_not_the_chunks(make_pipeline: MakePipeline) -> None:
    services, pipeline, _, _ = await make_pipeline()
    answer = ("Some **bold** words and plain text. " * 250)[:8000]
    services.llm = ChunkingLLM(answer, size=4)  # 2,000 chunks
    channel = PreviewingChannel(every=100)
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=1, trace_id=current_trace_id(), chat_id=100, chat_type="private",
                                 user_id=100, text="tell me", received_at=datetime.now(UTC))
        assert await pipeline.run_turn(inbound, channel) == "replied"  # type: ignore[arg-type]
    drafts = [event for event in channel.events if event.kind == "draft"]
    assert len(drafts) == 2000 and len({id(event) for event in drafts}) == 1  # one event, delivered per chunk
    streamed = drafts[0].streamed
    assert streamed is not None and streamed.text == answer
    assert len(channel.previews) == 20
    assert streamed.joins <= len(channel.previews) + 1  # + the check above; not 2,000
    assert channel.previews[0] == answer[:400] and channel.previews[-1] == answer
    assert [event.text for event in channel.events if event.kind == "final"] == [answer]


class FailingOnceLLM(ChunkingLLM):
    """Streams a few words, then fails like a provider dropping the answer; the next call succeeds."""

    calls = 0

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        self.calls += 1
        if self.calls == 1:
            assert on_delta is not None
            await on_delta("half an ")
            raise GatewayError(Kind.llm_server, "HTTP 500: boom", status_code=500)
        return await super().complete(request, on_delta=on_delta)


async def test_a_retried_attempt_starts_its_draft_over(make_pipeline: MakePipeline) -> None:
    services, pipeline, _, channel = await make_pipeline()
    services.llm = FailingOnceLLM("the whole answer", size=5)
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=1, trace_id=current_trace_id(), chat_id=100, chat_type="private",
                                 user_id=100, text="hi", received_at=datetime.now(UTC))
        assert await pipeline.run_turn(inbound, channel) == "replied"
    drafts = [event for event in channel.events if event.kind == "draft"]
    assert [event.text_now() for event in drafts] == ["half an "] + ["the whole answer"] * 4
