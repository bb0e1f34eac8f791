"""/stop in process: the registry of running turns, cancelling the LLM call, and how a stopped
turn ends (partial answer marked, kept, accounted as estimated and not wasted; no DLQ entry)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from core.contracts import AgentRequest, InboundMessage, LLMResult, TokenUsage
from core.control import STOPPED_MARK, stopped_answer, until_stopped
from core.failures.taxonomy import GatewayError, Kind
from core.ports import DeltaSink
from core.running import RunningTurns
from core.telemetry import find_trace
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline

CHAT = 100


class SlowLLM:
    """Streams `chunks` one per `pace_s` after `first_s`; records whether it was cancelled."""

    def __init__(self, chunks: list[str], *, pace_s: float = 0.01, first_s: float = 0.0) -> None:
        self.chunks, self.pace_s, self.first_s = chunks, pace_s, first_s
        self.sent = 0
        self.cancelled = False
        self.requests: list[AgentRequest] = []

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        self.requests.append(request)
        try:
            await asyncio.sleep(self.first_s)
            for chunk in self.chunks:
                if on_delta is not None:
                    await on_delta(chunk)
                self.sent += 1
                await asyncio.sleep(self.pace_s)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return LLMResult(producer="llm", trace_id=current_trace_id() or "0" * 32, text="".join(self.chunks),
                         finish_reason="stop", usage=TokenUsage(input_tokens=1, output_tokens=1, total_tokens=2),
                         model=request.model)


async def start_turn(services, pipeline, channel, text: str) -> asyncio.Task:  # noqa: ANN001
    async def run() -> str:
        with new_turn_span(services.tracer, "turn"):
            inbound = InboundMessage(update_id=1, trace_id=current_trace_id(), chat_id=CHAT, chat_type="private",
                                     user_id=CHAT, text=text, received_at=datetime.now(UTC))
            return await pipeline.run_turn(inbound, channel)
    return asyncio.create_task(run())


async def wait_until(predicate, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polls what the fake LLM did, no event to wait on
            await asyncio.sleep(0.005)


async def test_stop_midway_keeps_the_partial_answer_and_accounts_it(make_pipeline: MakePipeline) -> None:
    services, pipeline, _, channel = await make_pipeline()
    slow = services.llm = SlowLLM([f"part{n} " for n in range(1000)])
    task = await start_turn(services, pipeline, channel, "a long one please")
    await wait_until(lambda: slow.sent >= 5)
    assert services.running.stop(CHAT) is True
    assert await task == "stopped"
    assert slow.cancelled and slow.sent < 1000
    [final] = channel.texts("final")
    assert final.startswith("part0 part1 part2 part3 part4") and final.endswith("\n\n" + STOPPED_MARK)
    [usage] = services.ledger.db.conn.execute("SELECT estimated, wasted, input_tokens, output_tokens, model FROM usage"
                                         ).fetchall()
    assert usage[0] == 1 and usage[1] == 0 and usage[2] > 0 and usage[3] >= 5
    assert usage[4] == services.settings.llm_model
    history = await services.history.recent(CHAT, max_tokens=100_000)
    assert [(m.role, m.content) for m in history] == [("user", "a long one please"), ("assistant", final)]
    assert await services.dlq.depth() == 0
    # A stop says nothing about the provider: the circuit saw neither a failure nor a success.
    [breaker] = services.breakers.all()
    assert breaker.state == "closed" and breaker.consecutive_failures == 0
    assert not services.running.is_running(CHAT) and services.running.stop(CHAT) is False
    # The trace says so: an event on the llm stage, the outcome on the turn, and no error anywhere.
    services.telemetry.force_flush()
    spans = {span.name: span for span in find_trace(services.telemetry.db_path, channel.events[-1].trace_id)}
    [stopped] = [e for e in spans["llm"].events if e["name"] == "stopped"]
    assert stopped["attributes"]["stopped.partial_chars"] >= len(final.removesuffix("\n\n" + STOPPED_MARK))
    assert spans["turn"].attributes["turn.outcome"] == "stopped"
    assert all(span.status != "ERROR" for span in spans.values())


async def test_stop_before_the_first_token_still_accounts_the_prompt(make_pipeline: MakePipeline) -> None:
    services, pipeline, _, channel = await make_pipeline()
    slow = services.llm = SlowLLM(["never"], first_s=30)
    task = await start_turn(services, pipeline, channel, "hello")
    await wait_until(lambda: slow.requests)
    services.running.stop(CHAT)
    assert await task == "stopped"
    assert channel.texts("final") == [STOPPED_MARK]
    [(input_tokens, output_tokens, estimated)] = services.db.conn.execute(
        "SELECT input_tokens, output_tokens, estimated FROM usage").fetchall()
    assert input_tokens > 0 and output_tokens == 0 and estimated == 1


async def test_stop_before_the_llm_stage_sends_no_request(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()

    async def stop_now(turn) -> None:  # noqa: ANN001 - a stage: /stop arrives while the context is built
        assert services.running.stop(turn.inbound.chat_id)

    names = [name for name, _ in pipeline.stages]
    pipeline.stages.insert(names.index("llm"), ("stop_now", stop_now))
    assert await (await start_turn(services, pipeline, channel, "hello")) == "stopped"
    assert llm.requests == [] and channel.texts("final") == [STOPPED_MARK]
    assert services.db.conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 0  # nothing was sent
    assert [m.content for m in await services.history.recent(CHAT, max_tokens=10_000)] == ["hello", STOPPED_MARK]


async def test_a_stopped_probe_frees_the_half_open_circuit(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(breaker_failure_threshold=1, breaker_reset_seconds=0.05)
    llm.enqueue(GatewayError(Kind.llm_server, "down"))
    assert await (await start_turn(services, pipeline, channel, "one")) == "dlq"  # the circuit opened
    await asyncio.sleep(0.06)
    slow = services.llm = SlowLLM(["x"], first_s=30)
    task = await start_turn(services, pipeline, channel, "two")  # the half-open probe
    await wait_until(lambda: slow.requests)
    services.running.stop(CHAT)
    assert await task == "stopped"
    services.llm = llm
    llm.enqueue("back")
    # Not "circuit open": the stopped probe was given back, so this turn may probe.
    assert await (await start_turn(services, pipeline, channel, "three")) == "replied"


async def test_a_turn_that_finishes_is_not_stopped_and_leaves_the_registry(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    llm.enqueue("done")
    task = await start_turn(services, pipeline, channel, "hi")
    assert await task == "replied" and channel.texts("final") == ["done"]
    assert not services.running.is_running(CHAT)


async def test_until_stopped_returns_the_result_or_the_error_of_a_call_that_ends_first() -> None:
    stop = asyncio.Event()

    async def answer() -> str:
        return "ok"

    async def broken() -> str:
        raise ValueError("bad")

    assert await until_stopped(stop, answer()) == "ok"
    with pytest.raises(ValueError, match="bad"):
        await until_stopped(stop, broken())
    stop.set()
    cancelled = asyncio.Event()

    async def forever() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    stopped_later = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, stopped_later.set)
    assert await until_stopped(stopped_later, forever()) is None
    assert cancelled.is_set()  # cancelled and waited for, not left running
    started = []

    async def records() -> str:
        started.append(True)
        return "late"

    assert await until_stopped(stop, records()) is None  # already stopped: the call never starts
    assert started == []


async def test_running_turns_knows_one_turn_per_chat() -> None:
    running = RunningTurns()
    first, second = asyncio.Event(), asyncio.Event()
    assert running.stop(1) is False
    with running.running(1, first):
        assert running.is_running(1) and not running.is_running(2)
        assert running.stop(1) is True and first.is_set()
        assert running.stop(1) is False  # already asked
    assert not running.is_running(1)
    with running.running(1, second):
        pass
    assert not second.is_set() and not running.is_running(1)


def test_stopped_answer_marks_the_partial_text() -> None:
    assert stopped_answer("Once upon a time  \n") == "Once upon a time\n\n(stopped)"
    assert stopped_answer("") == "(stopped)"
