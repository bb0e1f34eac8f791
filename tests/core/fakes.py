"""In-process stand-ins for core's ports, scripted with `enqueue()`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from core.contracts import AgentRequest, LLMResult, ReplyEvent, TokenUsage, ToolCall
from core.ports import DeliveryFailed, DeltaSink

if TYPE_CHECKING:
    from core.pipeline import Pipeline
    from core.services import Services

# What the `make_pipeline` fixture (tests/core/conftest.py) returns, and the fixture's own type.
Built = tuple["Services", "Pipeline", "ScriptedLLM", "RecordingChannel"]
MakePipeline = Callable[..., Any]


class ScriptedLLM:
    """An LLM port: answers from a script (text, ToolCall tuples or exceptions), else echoes."""

    def __init__(self, model: str = "gpt-4o-mini") -> None:
        self.model = model
        self.script: list[object] = []
        self.requests: list[AgentRequest] = []

    def enqueue(self, *items: object) -> None:
        self.script.extend(items)

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        self.requests.append(request)
        item = self.script.pop(0) if self.script else None
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Callable):  # type: ignore[arg-type]
            item = item(request)
        tool_calls: tuple[ToolCall, ...] = ()
        if isinstance(item, tuple):
            tool_calls, text = item, ""
        else:
            text = item if isinstance(item, str) else f"echo: {request.messages[-1].content}"
        if on_delta is not None and text:
            await on_delta(text)
        trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
        return LLMResult(producer="llm", trace_id=trace_id, text=text, tool_calls=tool_calls,
                         finish_reason="tool_calls" if tool_calls else "stop",
                         usage=TokenUsage(input_tokens=100, output_tokens=10, total_tokens=110), model=self.model)


class RecordingChannel:
    """A Channel port that records every event; `fail_final` raises DeliveryFailed on finals."""

    def __init__(self) -> None:
        self.events: list[ReplyEvent] = []
        self.fail_final: DeliveryFailed | None = None
        self.files: dict[str, bytes] = {}

    async def deliver(self, event: ReplyEvent) -> None:
        if event.kind == "final" and self.fail_final is not None:
            raise self.fail_final
        self.events.append(event)

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        return self.files[file_id]

    def texts(self, *kinds: str) -> list[str]:
        return [e.text_now() for e in self.events if not kinds or e.kind in kinds]


async def build_pipeline(tmp_path: Path, *, tracing: bool = True, **overrides: object):
    """Real services and pipeline over a temp DATA_DIR, with a ScriptedLLM and a RecordingChannel.
    Operator 900; users 100 and 101 allowed; retry waits zero. Tests use the `make_pipeline`
    fixture (tests/core/conftest.py), which closes what this opens."""
    from config.settings import Settings
    from core.pipeline import Pipeline
    from core.services import build_services

    values: dict[str, object] = {"operator_chat_id": 900, "allowed_user_ids": "100,101", "retry_wait_scale": 0.0}
    values.update(overrides)
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", **values)
    llm = ScriptedLLM()
    services = await build_services(settings, llm=llm, tracing=tracing, speaker=ScriptedSpeaker())
    return services, Pipeline(services), llm, RecordingChannel()


class ScriptedSpeaker:
    """A Speaker port: records each text read aloud and answers with fixed Opus-looking bytes,
    or raises `fail` when set."""

    AUDIO = b"OggS-scripted-opus"

    def __init__(self, model: str = "tts-1") -> None:
        self.model = model
        self.texts: list[str] = []
        self.fail: BaseException | None = None

    async def speak(self, text: str) -> bytes:
        self.texts.append(text)
        if self.fail is not None:
            raise self.fail
        return self.AUDIO
