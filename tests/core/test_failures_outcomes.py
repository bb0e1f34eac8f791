"""How failed turns end, in process: the circuit gate, DLQ alerts, replays that fail again."""

from __future__ import annotations

from datetime import UTC, datetime

from core.contracts import InboundMessage, ReplyEvent
from core.failures.classify import to_gateway_error
from core.failures.taxonomy import GatewayError, Kind
from core.ports import DeliveryFailed
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline, RecordingChannel

OPERATOR = 900


async def turn(services, pipeline, channel, text: str, *, update_id: int, replay_dlq_id: int | None = None):
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=update_id, trace_id=current_trace_id(), chat_id=100, chat_type="private",
                                 user_id=100, text=text, received_at=datetime.now(UTC))
        return await pipeline.run_turn(inbound, channel, replay_dlq_id=replay_dlq_id,
                                       late_of="10:00 UTC" if replay_dlq_id else None)


async def alerts(services) -> list[str]:
    return [row.text for row in await services.outbox.pending_for(OPERATOR)]


def server_error() -> GatewayError:
    return GatewayError(Kind.llm_server, "HTTP 500: boom", status_code=500)


async def test_an_open_circuit_fails_fast_with_one_alert(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(breaker_failure_threshold=1, breaker_reset_seconds=60)
    llm.enqueue(server_error())
    assert await turn(services, pipeline, channel, "one", update_id=1) == "dlq"
    assert len(llm.requests) == 1  # the failure opened the circuit: the retry was not sent
    for update_id in (2, 3, 4):
        assert await turn(services, pipeline, channel, "more", update_id=update_id) == "dlq"
    assert len(llm.requests) == 1
    assert all("temporarily unavailable" in text for text in channel.texts("error")[1:])
    opened = [text for text in await alerts(services) if "opened after" in text]
    assert len(opened) == 1
    assert not [text for text in await alerts(services) if "dead-letter queue (circuit_open)" in text]
    assert [row.error_kind for row in await services.dlq.list("pending")] == ["circuit_open"] * 4


async def test_dlq_alert_names_the_replay_and_an_outage_is_not_a_chat_failing(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(breaker_failure_threshold=100)
    for update_id in (1, 2, 3):
        llm.enqueue(server_error(), server_error())
        assert await turn(services, pipeline, channel, f"try {update_id}", update_id=update_id) == "dlq"
    [alert] = await alerts(services)  # one per kind per cooldown, and no "chat keeps failing" for an outage
    assert "dead-letter queue (llm_server)" in alert and "/replay 1" in alert
    assert "I kept your message" in channel.texts("error")[0]


async def test_a_replay_that_fails_again_is_not_told_to_the_user_twice(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    llm.enqueue(server_error(), server_error())
    await turn(services, pipeline, channel, "hello", update_id=1)
    [entry] = await services.dlq.list("pending")
    assert entry.replayable and len(channel.texts("error")) == 1

    claimed = await services.dlq.claim_for_replay(entry.id, now=services.clock.iso())
    assert claimed is not None
    llm.enqueue(GatewayError(Kind.llm_bad_request, "HTTP 400: no such parameter", status_code=400))
    assert await turn(services, pipeline, channel, "hello", update_id=1, replay_dlq_id=entry.id) == "failed"
    assert len(channel.texts("error")) == 1  # the user heard once; the operator sees the replay's outcome
    await services.dlq.finish_replay(entry.id, ok=False, trace_id="0" * 32, now=services.clock.iso(), error="failed")
    again = await services.dlq.get(entry.id)
    assert again is not None and again.status == "pending"
    assert (again.error_kind, again.replayable) == ("llm_bad_request", False)  # waits for the operator now


async def test_a_late_answer_is_not_streamed(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    llm.enqueue(server_error(), server_error())
    await turn(services, pipeline, channel, "later", update_id=1)
    [entry] = await services.dlq.list("pending")
    await services.dlq.claim_for_replay(entry.id, now=services.clock.iso())
    assert await turn(services, pipeline, channel, "later", update_id=1, replay_dlq_id=entry.id) == "replied"
    assert channel.texts("draft") == []
    assert channel.texts("final")[0].startswith("(Sorry for the delay")


async def test_a_blocked_chat_is_recorded_and_the_answer_kept_nowhere(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    channel.fail_final = DeliveryFailed("forbidden: bot was blocked by the user", permanent=True, chat_gone=True)
    assert await turn(services, pipeline, channel, "bye", update_id=1) == "replied"  # answered, not deliverable
    assert await services.chats.is_blocked(100)
    assert await services.outbox.depth() == 0 and await services.dlq.depth() == 0 and channel.texts("error") == []


def test_delivery_failures_map_to_telegram_kinds() -> None:
    gone = DeliveryFailed("forbidden", permanent=True, chat_gone=True)
    assert gone.permanent and to_gateway_error(gone).kind == Kind.tg_blocked
    flood = DeliveryFailed("flood control", permanent=False, retry_after_s=3)
    assert to_gateway_error(flood).kind == Kind.tg_flood
    assert to_gateway_error(DeliveryFailed("NetworkError", permanent=False)).kind == Kind.tg_network


async def test_an_ordinary_sql_error_goes_to_the_dlq_once_not_deferred(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    services.db.conn.execute("DROP TABLE prompt_metrics")  # a bug (a missing migration), not a full disk
    assert await turn(services, pipeline, channel, "hello", update_id=1) == "dlq"
    [entry] = await services.dlq.list("pending")
    assert entry.error_kind == "internal" and "no such table" in entry.error_message
    assert llm.requests == []  # failed in the context stage, before any spend
    [error] = channel.texts("error")
    assert "ref:" in error and "can't save messages" not in error
    assert any("A turn failed inside the gateway" in text for text in await alerts(services))


class ErrorReplyRaises(RecordingChannel):
    """A channel with a bug: sending the error reply raises something other than DeliveryFailed."""

    def __init__(self) -> None:
        super().__init__()
        self.error_attempts = 0

    async def deliver(self, event: ReplyEvent) -> None:
        if event.kind == "error":
            self.error_attempts += 1
            raise RuntimeError("the channel could not render this")
        await super().deliver(event)


async def test_fail_turn_never_raises_and_still_alerts_the_operator(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, _ = await make_pipeline()
    channel = ErrorReplyRaises()
    llm.enqueue(GatewayError(Kind.llm_bad_request, "HTTP 400: no such parameter", status_code=400))
    assert await turn(services, pipeline, channel, "hello", update_id=1) == "dlq"
    assert channel.error_attempts == 1  # told once (it failed); no second error from a leaked exception
    assert [row.error_kind for row in await services.dlq.list("pending")] == ["llm_bad_request"]
    assert any("The LLM provider refused the request" in text for text in await alerts(services))
