"""The adapter reads the event stream itself (core/llm_stream.py): SSE framing, provider error
events, junk shapes and connection reuse, against a server that sends exactly the bytes given."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.context.tokens import counter_for_model
from core.contracts import AgentRequest, ChatMessage, ContractViolation
from core.failures.llm_errors import classify_llm_error
from core.failures.taxonomy import Kind
from core.llm import OpenAICompatibleLLM

TRACE = "0123456789abcdef0123456789abcdef"


def chunk(content: str | None = None, *, finish: str | None = None, usage: Any = None, **extra: Any) -> str:
    delta = {} if content is None else {"content": content}
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    if usage is not None:
        body = {**body, "choices": [], "usage": usage}
    return json.dumps(body)


class RawSSE:
    """Answers every completion with the next body in `bodies`; records each request's peer port."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.peers: list[int] = []
        self.headers: list[dict[str, str]] = []
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.peers.append(request.transport.get_extra_info("peername")[1])
        self.headers.append({name.lower(): value for name, value in request.headers.items()})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(self.bodies.pop(0))
        await response.write_eof()
        return response


@pytest.fixture
async def server() -> AsyncIterator[RawSSE]:
    raw = RawSSE()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", raw.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    raw.base_url = f"http://127.0.0.1:{port}/v1"
    yield raw
    await runner.cleanup()


@pytest.fixture
async def llm(server: RawSSE) -> AsyncIterator[OpenAICompatibleLLM]:
    adapter = OpenAICompatibleLLM(base_url=server.base_url, api_key="sk-test", model="gpt-4o-mini", timeout_s=5,
                                  tracer=trace.get_tracer("test"), counter=counter_for_model("gpt-4o-mini"))
    yield adapter
    await adapter.close()


def request() -> AgentRequest:
    return AgentRequest(producer="pipeline", trace_id=TRACE, chat_id=1, user_id=1, model="gpt-4o-mini", max_output_tokens=64,
                        messages=(ChatMessage(role="system", content="s"), ChatMessage(role="user", content="hi")))


async def test_sse_framing_comments_crlf_and_multiline_data(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    first, second = chunk("Hel"), chunk("lo")
    half = second.index(', "object"') + 1  # the data lines are joined by a newline: split between tokens
    server.bodies.append((
        ": keep-alive comment\r\n\r\n"
        f"event: message\r\nid: 1\r\ndata: {first}\r\n\r\n"
        f"data:{second[:half]}\ndata:{second[half:]}\n\n"  # one event over two data lines, no space
        f"data: {chunk(finish='stop')}\n\n"
        f"data: {chunk(usage={'prompt_tokens': 7, 'completion_tokens': 2, 'total_tokens': 9})}\n\n"
        "data: [DONE]\n\n").encode())
    result = await llm.complete(request())
    assert (result.text, result.finish_reason, result.model) == ("Hello", "stop", "gpt-4o-mini-2024")
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.estimated) == (7, 2, False)


async def test_a_last_event_without_its_blank_line_still_counts(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    server.bodies.append(f"data: {chunk('whole')}\n\ndata: {chunk(finish='length')}".encode())
    result = await llm.complete(request())
    assert (result.text, result.finish_reason, result.usage.estimated) == ("whole", "length", True)


async def test_an_error_event_is_the_providers_api_error(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    error = {"error": {"message": "upstream overloaded", "type": "server_error"}}
    server.bodies.append(f"data: {chunk('par')}\n\ndata: {json.dumps(error)}\n\n".encode())
    with pytest.raises(openai.APIError) as caught:
        await llm.complete(request())
    assert caught.value.message == "upstream overloaded"
    assert caught.value.body == error["error"]


@pytest.mark.parametrize(("body", "field"), [
    ('data: [1, 2]\n\n', "chunk"),
    ('data: {"choices": {"delta": 1}}\n\n', "choices"),
    ('data: {"choices": [{"delta": {"tool_calls": "x"}}]}\n\n', "tool_calls"),
])
async def test_junk_shapes_are_contract_violations(server: RawSSE, llm: OpenAICompatibleLLM, body: str,
                                                  field: str) -> None:
    server.bodies.append(body.encode())
    with pytest.raises(ContractViolation) as caught:
        await llm.complete(request())
    assert (caught.value.producer, caught.value.field) == ("llm", field)
    assert classify_llm_error(caught.value).kind is Kind.llm_malformed


async def test_a_data_line_that_is_not_json_is_malformed(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    server.bodies.append(b"data: {not json\n\n")
    with pytest.raises(json.JSONDecodeError) as caught:
        await llm.complete(request())
    assert classify_llm_error(caught.value).kind is Kind.llm_malformed


async def test_wrong_typed_fields_are_skipped_not_crashed_on(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    odd = {"model": 5, "usage": {"prompt_tokens": "7"},
           "choices": [{"delta": {"content": 3}, "finish_reason": 1}, {"delta": "x"}]}
    server.bodies.append(f"data: {chunk('ok')}\n\ndata: {json.dumps(odd)}\n\ndata: [DONE]\n\n".encode())
    result = await llm.complete(request())
    assert (result.text, result.finish_reason, result.model, result.usage.estimated) == (
        "ok", "stop", "gpt-4o-mini-2024", True)


async def test_the_connection_is_reused_after_done(server: RawSSE, llm: OpenAICompatibleLLM) -> None:
    for _ in range(3):
        server.bodies.append(f"data: {chunk('a')}\n\ndata: [DONE]\n\n".encode())
        await llm.complete(request())
    assert len(server.peers) == 3 and len(set(server.peers)) == 1, server.peers


async def test_the_request_carries_traceparent_and_the_bearer_key_only(
        server: RawSSE, llm: OpenAICompatibleLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request goes out through the SDK's public `post`: the turn's W3C traceparent (the chat
    span's id as parent) and `Authorization: Bearer <LLM key>`, never the admin key the SDK
    would read from OPENAI_ADMIN_KEY."""
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-secret")
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    adapter = OpenAICompatibleLLM(base_url=server.base_url, api_key="sk-test", model="gpt-4o-mini", timeout_s=5,
                                  tracer=tracer, counter=counter_for_model("gpt-4o-mini"))
    server.bodies.append(f"data: {chunk('a')}\n\ndata: [DONE]\n\n".encode())
    try:
        with tracer.start_as_current_span("turn"):
            await adapter.complete(request())
    finally:
        await adapter.close()
    chat = next(span for span in spans.get_finished_spans() if span.name == "chat gpt-4o-mini")
    sent = server.headers[-1]
    assert sent["authorization"] == "Bearer sk-test"
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", f"{chat.context.trace_id:032x}", f"{chat.context.span_id:016x}")
    assert int(flags, 16) & 1  # sampled
    assert "sk-admin-secret" not in json.dumps(sent)


async def test_each_delta_is_passed_on_as_it_came_never_the_text_so_far(server: RawSSE,
                                                                       llm: OpenAICompatibleLLM) -> None:
    pieces = [f"w{i} " for i in range(50)]
    server.bodies.append(("".join(f"data: {chunk(piece)}\n\n" for piece in pieces) + "data: [DONE]\n\n").encode())
    received: list[str] = []

    async def sink(delta: str) -> None:
        received.append(delta)

    result = await llm.complete(request(), on_delta=sink)
    assert received == pieces  # the adapter joins nothing per chunk: 50 pieces, not 50 growing prefixes
    assert result.text == "".join(pieces)
