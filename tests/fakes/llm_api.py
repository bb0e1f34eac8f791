"""A local OpenAI-compatible chat completions server, for end-to-end tests.

Why it exists: the gateway must be tested against the wire format it meets in
production (the ``openai`` client over HTTP, SSE streaming with tool-call deltas
and a trailing usage chunk) and against the ways providers fail (5xx, 429 with
Retry-After, bad keys, context overflow, quota, truncated or malformed bodies,
hangs) without network access or spend. Tests script answers with
:meth:`FakeLLM.enqueue`; unscripted requests get a deterministic echo so a test
can tell which message produced which reply.

Runs on its own event loop in a background thread (see
:class:`tests.fakes.telegram_api.BackgroundServer`), so synchronous tests that
drive the bot as a subprocess can use it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes.telegram_api import BackgroundServer

__all__ = [
    "Error",
    "FakeLLM",
    "Hang",
    "Item",
    "Malformed",
    "RecordedRequest",
    "Reply",
    "ToolCalls",
    "estimate_prompt_tokens",
]

Usage = tuple[int, int] | Literal["omit"] | None
"""(prompt_tokens, completion_tokens), None for the default estimate, "omit" for none at all."""


@dataclass
class Reply:
    """An assistant text answer, streamed in ``chunk_chars`` pieces ``delay_s`` apart.

    ``usage`` None means the default estimate (characters // 4 + 1), "omit" sends
    no usage at all (like providers that ignore ``stream_options``).
    ``cut_after_chunks`` drops the connection after that many content chunks to
    simulate a stream that dies midway (streaming requests only).
    """

    text: str
    _: KW_ONLY
    chunk_chars: int = 20
    delay_s: float = 0.0
    usage: Usage = None
    finish_reason: str = "stop"
    cut_after_chunks: int | None = None


@dataclass
class ToolCalls:
    """The assistant asks for tool calls: ``calls`` is [(id, name, arguments_json)]."""

    calls: list[tuple[str, str, str]]
    _: KW_ONLY
    usage: Usage = None
    content: str | None = None
    chunk_chars: int = 12
    delay_s: float = 0.0


@dataclass
class Error:
    """An HTTP error answer with an OpenAI-style JSON ``body`` (see the constructors)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def server_error(cls, message: str = "boom") -> Error:
        """500, what a provider outage looks like."""
        return cls(500, _err(message, "server_error"))

    @classmethod
    def rate_limited(cls, retry_after: int = 1) -> Error:
        """429 with a Retry-After header (retryable after a wait)."""
        body = _err("Rate limit reached for requests", "requests", code="rate_limit_exceeded")
        return cls(429, body, {"Retry-After": str(retry_after)})

    @classmethod
    def insufficient_quota(cls) -> Error:
        """429 that must NOT be retried: the account is out of credit."""
        body = _err(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            code="insufficient_quota",
        )
        return cls(429, body)

    @classmethod
    def invalid_api_key(cls) -> Error:
        """401, a configuration error (never retried)."""
        return cls(
            401,
            _err("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"),
        )

    @classmethod
    def context_length_exceeded(cls) -> Error:
        """400 for a prompt larger than the model's window."""
        body = _err(
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            param="messages",
            code="context_length_exceeded",
        )
        return cls(400, body)


MALFORMED_KINDS = ("no_choices", "bad_tool_json", "not_json", "empty")


@dataclass
class Malformed:
    """A 200 answer that is broken in one of :data:`MALFORMED_KINDS` ways."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in MALFORMED_KINDS:
            raise ValueError(f"kind must be one of {MALFORMED_KINDS}, not {self.kind!r}")


@dataclass
class Hang:
    """Wait ``seconds`` before answering (``then`` or the default reply): for timeouts."""

    seconds: float
    then: Item | None = None


Item = Reply | ToolCalls | Error | Malformed | Hang


@dataclass
class RecordedRequest:
    """One HTTP request the fake received (``body`` is the parsed JSON or None)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    at: float

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat messages sent (empty if the body had none)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("messages"), list):
            return self.body["messages"]
        return []

    @property
    def image_urls(self) -> list[list[str]]:
        """Per message, the image URLs of its content parts (empty for a plain-text message)."""
        return [
            [
                part["image_url"]["url"]
                for part in m["content"]
                if isinstance(part, dict) and part.get("type") == "image_url"
            ]
            if isinstance(m.get("content"), list)
            else []
            for m in self.messages
        ]

    @property
    def stream(self) -> bool:
        """Whether the client asked for SSE streaming."""
        return isinstance(self.body, dict) and self.body.get("stream") is True


def _err(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _content_text(content: Any) -> str:
    """Text of a message ``content`` (a string or a list of typed parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Default prompt_tokens: total characters of all message contents // 4 + 1."""
    return (
        sum(len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict)) // 4 + 1
    )


def echo_reply(body: dict[str, Any]) -> Item:
    """The default answer: "echo: " + the last user message (first 200 characters)."""
    messages = body.get("messages") or []
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    text = _content_text(last_user.get("content")) if last_user else ""
    return Reply("echo: " + text[:200])


def _chunks(text: str, size: int) -> Iterator[str]:
    size = max(1, size)
    for start in range(0, len(text), size):
        yield text[start : start + size]


class FakeLLM(BackgroundServer):
    """An OpenAI-compatible ``/v1/chat/completions`` + ``/v1/models`` server.

    Point ``LLM_BASE_URL`` at :attr:`base_url`. Answers come, in order of priority,
    from :meth:`fail_all` (an outage), the :meth:`enqueue` queue, then the default
    factory (:func:`echo_reply` unless :meth:`set_default` changed it). With
    ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get 401,
    which proves the bot sends its configured key. With ``strict_model`` a request
    for another model gets OpenAI's 404 ``model_not_found``; ``models`` names more
    models it serves (one provider, several models), each answering as itself, and
    :meth:`fail_model` makes one of them fail while the others answer.
    """

    def __init__(
        self,
        model: str = "gpt-4o-mini",
        *,
        api_key: str | None = None,
        strict_model: bool = True,
        models: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.models = (model, *models)
        self._fail_model: dict[str, Item] = {}
        self.api_key = api_key
        self.strict_model = strict_model
        self._requests: list[RecordedRequest] = []
        self._queue: list[Item] = []
        self._default: Callable[[dict[str, Any]], Item] = echo_reply
        self._fail_all: Item | None = None
        self._ids = itertools.count(1)
        self._aborted_streams = 0
        # Speech to text (/audio/transcriptions): the transcript every request gets, or a failure.
        self.transcript = "What is the weather like on Mars?"
        self._transcription_failure: Error | None = None
        self.transcription_enabled = True  # False: 404, an endpoint without transcription

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the value for ``LLM_BASE_URL``."""
        return f"{self.root_url}/v1"

    # ------------------------------------------------------------------ scripting
    def enqueue(self, *items: Item) -> None:
        """Queue answers, consumed one per chat completion request, in order."""
        for item in items:
            if not isinstance(item, Reply | ToolCalls | Error | Malformed | Hang):
                raise TypeError(f"not a scripted item: {item!r}")
        with self._lock:
            self._queue.extend(items)

    def pending(self) -> int:
        """How many queued answers have not been consumed yet."""
        with self._lock:
            return len(self._queue)

    def set_default(self, item_factory: Callable[[dict[str, Any]], Item] | None) -> None:
        """Answer unscripted requests with ``item_factory(request_body)`` (None: echo)."""
        with self._lock:
            self._default = item_factory or echo_reply

    def fail_all(self, item: Item) -> None:
        """Answer every request with ``item`` (the queue is left untouched) until cleared."""
        with self._lock:
            self._fail_all = item

    def clear_failures(self) -> None:
        """End :meth:`fail_all` and :meth:`fail_model`."""
        with self._lock:
            self._fail_all = None
            self._fail_model.clear()

    def fail_transcriptions(self, item: Error | None) -> None:
        """Answer every /audio/transcriptions request with ``item`` (None: transcribe again)."""
        with self._lock:
            self._transcription_failure = item

    def transcriptions(self) -> list[RecordedRequest]:
        """The /audio/transcriptions requests received (multipart: see ``raw``)."""
        with self._lock:
            return [r for r in self._requests if r.path.endswith("/audio/transcriptions")]

    def fail_model(self, model: str, item: Item) -> None:
        """Answer every request for ``model`` with ``item`` until cleared (other models answer)."""
        with self._lock:
            self._fail_model[model] = item

    # ------------------------------------------------------------------ queries
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (any path), oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def completions(self, model: str | None = None) -> list[RecordedRequest]:
        """Only the chat completion requests (for ``model`` only, if given)."""
        with self._lock:
            done = [r for r in self._requests if r.path.endswith("/chat/completions")]
        if model is None:
            return done
        return [r for r in done if isinstance(r.body, dict) and r.body.get("model") == model]

    def count(self) -> int:
        """Number of chat completion requests: what cost money."""
        return len(self.completions())

    def aborted_streams(self) -> int:
        """Streamed answers the client closed before their end (not ``cut_after_chunks``)."""
        with self._lock:
            return self._aborted_streams

    def last_request(self) -> RecordedRequest:
        """The most recent chat completion request (AssertionError if none)."""
        done = self.completions()
        if not done:
            raise AssertionError("FakeLLM received no chat completion request")
        return done[-1]

    # ================================================================== server side
    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._error_middleware], client_max_size=32 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._handle_completions)
        app.router.add_get("/v1/models", self._handle_models)
        app.router.add_post("/v1/audio/speech", self._handle_speech)
        app.router.add_post("/v1/audio/transcriptions", self._handle_transcriptions)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    @web.middleware
    async def _error_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return web.json_response(_err(exc.reason, "invalid_request_error"), status=exc.status)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:  # the client went away mid-answer (a timeout, a killed bot)
            return web.Response(status=499)
        except Exception as exc:  # answer 500 rather than leave the client hanging
            self._record_server_error(f"{request.method} {request.path}", exc)
            return web.json_response(
                _err(f"FakeLLM internal error: {exc!r}", "server_error"), status=500
            )

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            request.method, request.path, dict(request.headers), body, raw, time.monotonic()
        )
        with self._lock:
            self._requests.append(recorded)
        return recorded

    def _auth_error(self, recorded: RecordedRequest) -> web.Response | None:
        if self.api_key is None:
            return None
        if recorded.header("Authorization") == f"Bearer {self.api_key}":
            return None
        sent = (recorded.header("Authorization") or "").removeprefix("Bearer ")
        masked = f"{sent[:3]}*****{sent[-4:]}" if len(sent) > 8 else "<missing>"
        body = _err(
            f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            code="invalid_api_key",
        )
        return web.json_response(body, status=401)

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        await self._record(request)
        body = _err(
            f"Unknown request URL: {request.method} {request.path}.",
            "invalid_request_error",
            code="unknown_url",
        )
        return web.json_response(body, status=404)

    async def _handle_transcriptions(self, request: web.Request) -> web.Response:
        """OpenAI's speech to text: multipart ``file`` and ``model`` in, ``{"text": ...}`` out."""
        recorded = await self._record(request)
        denied = self._auth_error(recorded)
        if denied is not None:
            return denied
        if not self.transcription_enabled:
            return await self._handle_unknown_recorded(request)
        with self._lock:
            failure = self._transcription_failure
        if failure is not None:
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        raw = recorded.raw
        model = re.search(rb'name="model"\r\n\r\n([^\r]+)', raw)
        if model is None or b'name="file"' not in raw:
            return web.json_response(_err("'file' and 'model' are required", "invalid_request_error"), status=400)
        return web.json_response({"text": self.transcript})

    async def _handle_unknown_recorded(self, request: web.Request) -> web.Response:
        body = _err(f"Unknown request URL: {request.method} {request.path}.", "invalid_request_error",
                    code="unknown_url")
        return web.json_response(body, status=404)

    async def _handle_models(self, request: web.Request) -> web.Response:
        recorded = await self._record(request)
        denied = self._auth_error(recorded)
        if denied is not None:
            return denied
        model = {"id": self.model, "object": "model", "created": 1700000000, "owned_by": "fake"}
        return web.json_response({"object": "list", "data": [model]})

    async def _handle_completions(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        denied = self._auth_error(recorded)
        if denied is not None:
            return denied
        body = recorded.body
        if not isinstance(body, dict):
            return web.json_response(
                _err("We could not parse the JSON body of your request.", "invalid_request_error"),
                status=400,
            )
        if self.strict_model and body.get("model") not in self.models:
            message = (
                f"The model `{body.get('model')}` does not exist or you do not have access to it."
            )
            return web.json_response(
                _err(message, "invalid_request_error", code="model_not_found"), status=404
            )
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return web.json_response(
                _err(
                    "'messages' must be a non-empty array",
                    "invalid_request_error",
                    param="messages",
                ),
                status=400,
            )
        with self._lock:
            if self._fail_all is not None:
                item: Item = self._fail_all
            elif body.get("model") in self._fail_model:
                item = self._fail_model[body["model"]]
            elif self._queue:
                item = self._queue.pop(0)
            else:
                item = self._default(copy.deepcopy(body))
        return await self._answer(request, body, item)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], item: Item
    ) -> web.StreamResponse:
        request_id = f"req_fake{next(self._ids):06d}"
        headers = {"x-request-id": request_id}
        if isinstance(item, Hang):
            if not await self._sleep(item.seconds):
                return web.json_response(_err("server shutting down", "server_error"), status=503)
            with self._lock:
                then = item.then if item.then is not None else self._default(copy.deepcopy(body))
            return await self._answer(request, body, then)
        if isinstance(item, Error):
            return web.json_response(
                item.body, status=item.status, headers={**headers, **item.headers}
            )
        if isinstance(item, Malformed):
            if item.kind == "not_json":
                return web.Response(
                    text="<html><body><h1>502 Bad Gateway</h1></body></html>",
                    content_type="text/html",
                    headers=headers,
                )
            if item.kind == "empty":
                return web.Response(body=b"", content_type="application/json", headers=headers)
            if item.kind == "bad_tool_json":
                item = ToolCalls([("call_badjson", "lookup", '{"query": "unterminated')])
        stream = body.get("stream") is True
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        completion_id = f"chatcmpl-fake{next(self._ids):06d}"
        if not stream:
            return web.json_response(self._completion(completion_id, body, item), headers=headers)
        return await self._stream(request, completion_id, body, item, include_usage, headers)

    # ------------------------------------------------------------------ bodies
    def _usage(
        self, body: dict[str, Any], usage: Usage, completion_text: str
    ) -> dict[str, int] | None:
        if usage == "omit":
            return None
        if usage is None:
            prompt = estimate_prompt_tokens(body.get("messages") or [])
            completion = len(completion_text) // 4 + 1
        else:
            prompt, completion = usage
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _envelope(self, completion_id: str, obj: str, model: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": obj,
            "created": int(time.time()),
            "model": model if model in self.models else self.model,
            "system_fingerprint": "fp_fake",
        }

    def _completion(self, completion_id: str, body: dict[str, Any], item: Item) -> dict[str, Any]:
        out = self._envelope(completion_id, "chat.completion", body.get("model"))
        if isinstance(item, Malformed):  # no_choices
            out["choices"] = []
            return out
        if isinstance(item, Reply):
            message: dict[str, Any] = {"role": "assistant", "content": item.text, "refusal": None}
            finish, usage_spec, produced = item.finish_reason, item.usage, item.text
        elif isinstance(item, ToolCalls):
            message = {
                "role": "assistant",
                "content": item.content,
                "refusal": None,
                "tool_calls": [
                    {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                    for cid, name, args in item.calls
                ],
            }
            finish, usage_spec = "tool_calls", item.usage
            produced = (item.content or "") + "".join(n + a for _, n, a in item.calls)
        else:
            raise TypeError(f"cannot render {item!r}")
        out["choices"] = [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        ]
        usage = self._usage(body, usage_spec, produced)
        if usage is not None:
            out["usage"] = usage
        return out

    async def _stream(
        self,
        request: web.Request,
        completion_id: str,
        body: dict[str, Any],
        item: Item,
        include_usage: bool,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                **headers,
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
            out = self._envelope(completion_id, "chat.completion.chunk", body.get("model"))
            out["choices"] = (
                []
                if delta is None
                else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            )
            if include_usage:
                out["usage"] = None
            return out

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        try:
            if isinstance(item, Malformed):  # no_choices: chunks without choices, no content
                await send(chunk(None))
                await send("[DONE]")
                await response.write_eof()
                return response
            if isinstance(item, Reply):
                usage_spec, produced, finish = item.usage, item.text, item.finish_reason
                await send(chunk({"role": "assistant", "content": "", "refusal": None}))
                for number, piece in enumerate(_chunks(item.text, item.chunk_chars), 1):
                    if number > 1 and not await self._sleep(item.delay_s):
                        return response
                    await send(chunk({"content": piece}))
                    if item.cut_after_chunks is not None and number >= item.cut_after_chunks:
                        if request.transport is not None:
                            request.transport.close()  # a stream dying mid-answer
                        return response
            elif isinstance(item, ToolCalls):
                usage_spec, finish = item.usage, "tool_calls"
                produced = (item.content or "") + "".join(n + a for _, n, a in item.calls)
                await send(
                    chunk({"role": "assistant", "content": item.content or None, "refusal": None})
                )
                for index, (call_id, name, args) in enumerate(item.calls):
                    first = {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    await send(chunk({"tool_calls": [first]}))
                    for piece in _chunks(args, item.chunk_chars):
                        if not await self._sleep(item.delay_s):
                            return response
                        await send(
                            chunk(
                                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                            )
                        )
            else:
                raise TypeError(f"cannot stream {item!r}")
            await send(chunk({}, finish))
            usage = self._usage(body, usage_spec, produced)
            if include_usage and usage is not None:
                final = self._envelope(completion_id, "chat.completion.chunk", body.get("model"))
                final["choices"] = []
                final["usage"] = usage
                await send(final)
            await send("[DONE]")
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            # the client went away (its timeout fired, or it stopped reading): nothing left to say
            with self._lock:
                self._aborted_streams += 1
        return response

    # ------------------------------------------------------------------ speech (/audio/speech)
    # Opus in an Ogg container starts "OggS" ... "OpusHead": what a voice note's bytes look like.
    SPEECH_AUDIO = b"OggS\x00\x02" + b"\x00" * 20 + b"OpusHead\x01\x01" + b"fake-opus-speech" * 8

    def fail_speech(self, item: Error | None) -> None:
        """Answer every ``/audio/speech`` request with ``item`` (None: answer with audio again)."""
        with self._lock:
            self._speech_failure = item

    def speeches(self) -> list[RecordedRequest]:
        """The ``/audio/speech`` requests received (JSON bodies: model, voice, input, response_format)."""
        with self._lock:
            return [r for r in self._requests if r.path.endswith("/audio/speech")]

    async def _handle_speech(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        denied = self._auth_error(recorded)
        if denied is not None:
            return denied
        with self._lock:
            failure = getattr(self, "_speech_failure", None)
        if failure is not None:
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        body = recorded.body
        if not isinstance(body, dict) or not body.get("input") or not body.get("voice"):
            return web.json_response(_err("input and voice are required", "invalid_request_error"), status=400)
        return web.Response(body=self.SPEECH_AUDIO, content_type="audio/ogg")
