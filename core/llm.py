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

from openai import AsyncOpenAI
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from core.context.tokens import TokenCounter
from core.contracts import AgentRequest, ContractViolation, LLMResult, TokenUsage, ToolCall, build
from core.ports import DeltaSink
from core.tracing import current_trace_id, traceparent_headers


def _direct_post() -> tuple[Any, Any, Any] | None:
    try:
        from openai import AsyncStream
        from openai._base_client import make_request_options
        from openai.types.chat import ChatCompletion, ChatCompletionChunk
    except ImportError:
        return None

    def options(*, extra_headers: dict[str, str]) -> Any:
        try:  # newer SDKs name the auth scheme per request; older ones have no such option
            return make_request_options(extra_headers=extra_headers, security={"bearer_auth": True})
        except TypeError:
            return make_request_options(extra_headers=extra_headers)

    return options, AsyncStream[ChatCompletionChunk], ChatCompletion


_DIRECT_POST = _direct_post()


class OpenAICompatibleLLM:
    """Streams chat completions from `base_url` with one attempt per call."""

    def __init__(self, *, base_url: str, api_key: str | None, model: str, timeout_s: float,
                 tracer: trace.Tracer, counter: TokenCounter, provider_name: str = "openai") -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.tracer = tracer
        self.counter = counter
        self.provider_name = provider_name
        self.client = AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0,
                                  timeout=timeout_s)

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
        stream = await self._open_stream(body, headers=traceparent_headers())
        text_parts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish_reason: str | None = None
        usage: Any = None
        model = request.model
        saw_choice = False
        async for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            if getattr(chunk, "model", None):
                model = chunk.model
            for choice in chunk.choices or ():
                saw_choice = True
                delta = choice.delta
                if delta is not None and delta.content:
                    text_parts.append(delta.content)
                    if on_delta is not None:
                        await on_delta("".join(text_parts))
                for call in (delta.tool_calls or ()) if delta is not None else ():
                    slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    if call.id:
                        slot["id"] = call.id
                    if call.function is not None:
                        slot["name"] += call.function.name or ""
                        slot["arguments"] += call.function.arguments or ""
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
        if not saw_choice:
            raise ContractViolation("llm_response_has_choices", field="choices", producer="llm",
                                    detail="the provider returned no choices")
        text = "".join(text_parts)
        tool_calls = tuple(self._tool_call(index, slot) for index, slot in sorted(calls.items()))
        return build(LLMResult, "llm_result_valid", "llm", producer="llm", trace_id=current_trace_id() or "0" * 32,
                     text=text, tool_calls=tool_calls, finish_reason=finish_reason or "stop",
                     usage=self._usage(usage, request, text, tool_calls), model=model,
                     latency_s=time.monotonic() - started)

    async def _open_stream(self, body: dict[str, Any], *, headers: dict[str, str]) -> Any:
        """POST the body as it is. `chat.completions.create` first walks the whole payload with
        TypedDict introspection (about 0.3 ms per message, 1 ms for the tools, blocking the event
        loop); our contracts already made it plain JSON, so we send it through the same client
        (auth, base URL, timeouts, error mapping, SSE parsing) without that walk. Falls back to
        `create` if this SDK version lacks the pieces."""
        if _DIRECT_POST is None:
            return await self.client.chat.completions.create(**body, extra_headers=headers)
        make_options, stream_cls, cast_to = _DIRECT_POST
        return await self.client.post("/chat/completions", body=body, cast_to=cast_to, stream=True,
                                      stream_cls=stream_cls, options=make_options(extra_headers=headers))

    @staticmethod
    def _tool_call(index: int, slot: dict[str, str]) -> ToolCall:
        if not slot["name"]:
            raise ContractViolation("tool_call_named", field=f"tool_calls[{index}].function.name", producer="llm",
                                    detail="a tool call without a function name")
        try:
            arguments = json.loads(slot["arguments"] or "{}")
        except json.JSONDecodeError as error:
            raise ContractViolation("tool_call_json_valid", field=f"tool_calls[{index}].function.arguments",
                                    producer="llm", detail=f"arguments are not JSON ({error.msg})") from None
        if not isinstance(arguments, dict):
            raise ContractViolation("tool_call_json_valid", field=f"tool_calls[{index}].function.arguments",
                                    producer="llm", detail="arguments must be a JSON object")
        return build(ToolCall, "tool_call_valid", "llm", id=slot["id"] or f"call_{index}", name=slot["name"],
                     arguments=arguments)

    def _usage(self, usage: Any, request: AgentRequest, text: str, tool_calls: tuple[ToolCall, ...]) -> TokenUsage:
        if usage is not None and isinstance(getattr(usage, "prompt_tokens", None), int):
            prompt = max(0, usage.prompt_tokens)
            completion = max(0, int(getattr(usage, "completion_tokens", 0) or 0))
            return TokenUsage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
        prompt = sum(self.counter.count_message(m.content or "") for m in request.messages)
        completion = self.counter.count(text) + sum(self.counter.count(json.dumps(c.arguments)) for c in tool_calls)
        return TokenUsage(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion,
                          estimated=True)


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
