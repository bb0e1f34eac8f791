"""The LLM adapter: the official `openai` SDK pointed at any OpenAI-compatible endpoint.

One attempt per `complete` call: the SDK's own retries are off (`max_retries=0`) so that
our retry policy (core/failures/retry.py) is the only one and retries never stack. The
answer is streamed; usage comes from `stream_options.include_usage`, or is estimated with
tiktoken (and marked so) when the provider omits it. What the provider returns is checked
like any other contract: no choices, broken tool-call JSON or an unknown tool is a
`ContractViolation` of producer "llm", never a crash.

Each attempt is one span named per the OpenTelemetry GenAI conventions (`chat {model}`),
and the request carries the turn's W3C `traceparent` header.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
from openai import RequestOptions
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from core.context.images import url_tokens
from core.context.tokens import TokenCounter
from core.contracts import AgentRequest, ContractViolation, LLMResult, TokenUsage, ToolCall, build
from core.llm_stream import stream_events
from core.openai_client import openai_client
from core.ports import DeltaSink
from core.tracing import current_trace_id, traceparent_headers


def _request_options(headers: dict[str, str]) -> RequestOptions:
    """Per-request options as the SDK's public `RequestOptions` dict: the traceparent header, and
    the auth scheme `chat.completions.create` names for this endpoint (bearer only; the default
    also allows the admin-key scheme, which an LLM endpoint has no business receiving)."""
    return {"headers": headers, "security": {"bearer_auth": True}}


class OpenAICompatibleLLM:
    """Streams chat completions from `base_url` with one attempt per call."""

    def __init__(self, *, base_url: str, api_key: str | None, model: str, timeout_s: float,
                 tracer: trace.Tracer, counter: TokenCounter, provider_name: str = "openai") -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.tracer = tracer
        self.counter = counter
        self.provider_name = provider_name
        self.client = openai_client(base_url=base_url, api_key=api_key, timeout_s=timeout_s)

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        with chat_span(self.tracer, request, provider_name=self.provider_name) as span:
            async with asyncio.timeout(self.timeout_s):
                result = await self._stream(request, on_delta, time.monotonic())
            record_result(span, result)
            return result

    async def _stream(self, request: AgentRequest, on_delta: DeltaSink | None, started: float) -> LLMResult:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [m.to_openai() for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_output_tokens,
        }
        if request.tools:
            body["tools"] = [t.to_openai() for t in request.tools]
        response = await self._open_stream(body, headers=traceparent_headers())
        text_parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish_reason: str | None = None
        usage: Any = None
        model = request.model
        saw_choice = False
        async for chunk in stream_events(response):
            if not isinstance(chunk, dict):
                raise ContractViolation("llm_chunk_is_object", field="chunk", producer="llm",
                                        detail=f"a streamed chunk is {type(chunk).__name__}, not an object")
            if chunk.get("usage"):
                usage = chunk["usage"]
            if isinstance(chunk.get("model"), str) and chunk["model"]:
                model = chunk["model"]
            for choice in _objects(chunk.get("choices"), "choices"):
                saw_choice = True
                delta = choice.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                content = delta.get("content")
                if isinstance(content, str) and content:
                    text_parts.append(content)
                    if on_delta is not None:
                        await on_delta(content)
                for call in _objects(delta.get("tool_calls"), "tool_calls"):
                    index = call.get("index", 0)
                    slot = calls.setdefault(index if isinstance(index, int) else 0,
                                            {"id": "", "name": "", "arguments": ""})
                    if isinstance(call.get("id"), str) and call["id"]:
                        slot["id"] = call["id"]
                    function = call.get("function")
                    if isinstance(function, dict):
                        slot["name"] += _text(function.get("name"))
                        slot["arguments"] += _text(function.get("arguments"))
                if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                    finish_reason = choice["finish_reason"]
        if not saw_choice:
            raise ContractViolation("llm_response_has_choices", field="choices", producer="llm",
                                    detail="the provider returned no choices")
        text = "".join(text_parts)
        tool_calls = tuple(self._tool_call(index, slot) for index, slot in sorted(calls.items()))
        return build(LLMResult, "llm_result_valid", "llm", producer="llm", trace_id=current_trace_id() or "0" * 32,
                     text=text, tool_calls=tool_calls, finish_reason=finish_reason or "stop",
                     usage=self._usage(usage, request, text, tool_calls), model=model,
                     latency_s=time.monotonic() - started)

    async def _open_stream(self, body: dict[str, Any], *, headers: dict[str, str]) -> httpx2.Response:
        """POST the body as it is and return the open response; `stream_events` reads it.

        `chat.completions.create` first walks the whole payload with TypedDict introspection
        (about 0.3 ms per message, 1 ms for the tools, blocking the event loop), then builds a
        pydantic object per streamed chunk. Our contracts already made the body plain JSON, so it
        goes through the same client (auth, base URL, timeouts, HTTP error mapping to
        `openai.APIStatusError`) without either, by the SDK's public way to make a request of
        one's own: `client.post(path, cast_to=httpx2.Response, body=..., options=...)`."""
        return await self.client.post("/chat/completions", body=body, cast_to=httpx2.Response, stream=True,
                                      options=_request_options(headers))

    @staticmethod
    def _tool_call(index: int, slot: dict[str, str]) -> ToolCall:
        if not slot["name"]:
            raise ContractViolation("tool_call_named", field=f"tool_calls[{index}].function.name", producer="llm",
                                    detail="a tool call without a function name")
        # Arguments that are not a JSON object are the model's mistake, answered to the model by
        # the llm stage (core/context/tools.py), not a broken answer: the call is passed on with the reason.
        problem = None
        try:
            arguments = json.loads(slot["arguments"] or "{}")
        except json.JSONDecodeError as error:
            arguments, problem = {}, f"arguments are not JSON ({error.msg} at character {error.pos})"
        if not isinstance(arguments, dict):
            arguments, problem = {}, f"arguments must be a JSON object, got {type(arguments).__name__}"
        return build(ToolCall, "tool_call_valid", "llm", id=slot["id"] or f"call_{index}", name=slot["name"],
                     arguments=arguments, arguments_error=problem)

    def _usage(self, usage: Any, request: AgentRequest, text: str, tool_calls: tuple[ToolCall, ...]) -> TokenUsage:
        if isinstance(usage, dict) and _is_int(usage.get("prompt_tokens")):
            prompt = max(0, usage["prompt_tokens"])
            completion = max(0, usage["completion_tokens"]) if _is_int(usage.get("completion_tokens")) else 0
            return build(TokenUsage, "token_usage_valid", "llm", input_tokens=prompt, output_tokens=completion,
                         total_tokens=prompt + completion)
        prompt = sum(self.counter.count_message(m.content or "") + sum(map(url_tokens, m.images))
                     for m in request.messages)
        completion = self.counter.count(text) + sum(self.counter.count(json.dumps(c.arguments)) for c in tool_calls)
        return build(TokenUsage, "token_usage_valid", "llm", input_tokens=prompt, output_tokens=completion,
                     total_tokens=prompt + completion, estimated=True)


def _objects(value: Any, field: str) -> list[dict[str, Any]]:
    """A list of JSON objects from the stream, or a ContractViolation naming the field."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ContractViolation("llm_chunk_shape", field=field, producer="llm",
                                detail=f"{field} must be a list of objects")
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The GenAI span, shared by every LLM port (the benchmark's in-process one too) -----------------
@contextmanager
def chat_span(tracer: trace.Tracer, request: AgentRequest, *, provider_name: str) -> Iterator[trace.Span]:
    """One LLM attempt as an OpenTelemetry GenAI client span (`chat {model}`), made current so the
    HTTP request inside carries it in `traceparent`; a failure sets `error.type` (and the HTTP
    status when the SDK reports one) before it propagates."""
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_output_tokens,
        "gen_ai.conversation.id": str(request.chat_id),
        "gen_ai.request.message_count": len(request.messages),
    }
    with tracer.start_as_current_span(f"chat {request.model}", kind=trace.SpanKind.CLIENT,
                                      attributes=attributes) as span:
        try:
            yield span
        except BaseException as error:
            span.set_attribute("error.type", type(error).__name__)
            status_code = getattr(error, "status_code", None)  # openai.APIStatusError
            if isinstance(status_code, int):
                span.set_attribute("http.response.status_code", status_code)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


def record_result(span: trace.Span, result: LLMResult) -> None:
    """The response side of the GenAI conventions: model, token usage, finish reasons."""
    span.set_attributes({
        "gen_ai.response.model": result.model,
        "gen_ai.usage.input_tokens": result.usage.input_tokens,
        "gen_ai.usage.output_tokens": result.usage.output_tokens,
        "gen_ai.usage.estimated": result.usage.estimated,
        "gen_ai.response.finish_reasons": [result.finish_reason],
    })
