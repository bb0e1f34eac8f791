"""The conversation's messages: what a channel brings in, what goes to the LLM and what comes back."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from core.contracts.base import ChatType, Contract, ContractViolation, Int64, NonNegFloat, NonNegInt, TraceId

AttachmentKind = Literal["document", "voice", "audio", "video_note", "video", "animation"]
SPOKEN_KINDS = frozenset({"voice", "audio", "video_note"})  # transcribed (a video note: its sound)


class Attachment(Contract):
    """A file the user sent (a document, a voice note, an audio file, a video...), before it is
    downloaded. `duration_s` is what Telegram declares for sound and video (0: not given)."""

    made_by: ClassVar[str] = "channel"
    file_id: str = Field(min_length=1, max_length=512)
    file_name: str = Field(default="document", max_length=512)
    mime_type: str = Field(default="application/octet-stream", max_length=255)
    size_bytes: NonNegInt = 0
    kind: AttachmentKind = "document"
    duration_s: NonNegInt = 0

    @property
    def spoken(self) -> bool:
        return self.kind in SPOKEN_KINDS


class InboundMessage(Contract):
    """What a channel hands to core: one user message, already translated from Telegram."""

    producer: Literal["channel"] = "channel"
    update_id: Int64
    trace_id: TraceId
    chat_id: Int64
    chat_type: ChatType
    user_id: Int64
    user_name: str = Field(default="", max_length=256)
    # Who they are, for the operator's pairing request (user_name is the @username or else this).
    user_first_name: str = Field(default="", max_length=256)
    chat_title: str = Field(default="", max_length=256)
    message_id: Int64 | None = None
    text: str = Field(default="", max_length=200_000)
    attachment: Attachment | None = None
    received_at: datetime
    # The user spoke (a voice note, audio, a video note): the text is transcribed, and with /voice on
    # the answer is also read aloud (core/spoken.py).
    spoken: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> InboundMessage:
        if not self.text.strip() and self.attachment is None:
            raise ContractViolation("no_empty_user_turn", field="text", producer=self.producer,
                                    detail="a message needs text or an attachment")
        return self


class ToolCall(Contract):
    """A function call the model asked for; arguments are a JSON object. When the model's
    arguments were not one, `arguments` is empty and `arguments_error` says why: the model is
    told so as the call's result (a wrong call is the model's to fix, not a broken answer)."""

    made_by: ClassVar[str] = "llm"
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any]
    arguments_error: str | None = Field(default=None, max_length=500)


class ChatMessage(Contract):
    """One entry of the chat message list sent to the LLM."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    # Images of a user message, as `data:` URLs (never a Telegram file URL: it carries the token).
    images: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _images_are_data_urls(self) -> ChatMessage:
        for index, url in enumerate(self.images):
            if not url.startswith("data:image/"):
                raise ContractViolation("image_is_data_url", field=f"images[{index}]", producer="pipeline",
                                        detail="an image goes to the model as a data:image/... URL only")
        if self.images and self.role != "user":
            raise ContractViolation("image_is_data_url", field="images", producer="pipeline",
                                    detail=f"a {self.role} message cannot carry images")
        return self

    def to_openai(self) -> dict[str, Any]:
        content: Any = self.content
        if self.images:  # OpenAI's content parts: the text, then each image
            content = [{"type": "text", "text": self.content or ""}] if self.content else []
            content += [{"type": "image_url", "image_url": {"url": url}} for url in self.images]
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def check_message_list(messages: Sequence[ChatMessage], *, producer: str = "pipeline") -> None:
    """Invariant `message_list_well_formed`: one system message, first; tool results follow the
    assistant message whose calls they answer, each call id exactly once; no empty user turn."""

    def fail(index: int, detail: str) -> None:
        raise ContractViolation("message_list_well_formed", field=f"messages[{index}]", producer=producer,
                                detail=detail)

    if not messages or messages[0].role != "system":
        fail(0, "the first message must be the system message")
    pending: set[str] = set()
    answered: set[str] = set()
    # One pass; the common message (a user or assistant turn without tool calls) costs a few
    # attribute reads, as a prompt carries up to 400 history messages every call.
    for index, message in enumerate(messages):
        role = message.role
        calls = message.tool_calls
        if calls and role != "assistant":
            fail(index, f"a {role} message cannot carry tool calls")
        if message.tool_call_id is not None and role != "tool":
            fail(index, f"a {role} message cannot answer a tool call")
        if role == "tool":
            call_id = message.tool_call_id
            if call_id is None:
                fail(index, "a tool result needs the tool_call_id it answers")
            elif call_id in answered:
                fail(index, f"tool call {call_id!r} answered twice")
            elif call_id not in pending:
                fail(index, f"tool result {call_id!r} answers no call of the assistant message before it")
            pending.discard(call_id)  # type: ignore[arg-type]
            answered.add(call_id)  # type: ignore[arg-type]
            continue
        if pending:
            fail(index, f"tool calls {sorted(pending)} were not answered")
        if role == "user":
            if not (message.content or "").strip() and not message.images:
                fail(index, "empty user turn")
        elif role == "assistant":
            if calls:
                ids = [call.id for call in calls]
                if len(set(ids)) != len(ids):
                    fail(index, "tool call ids must be unique")
                pending = set(ids)
            elif not (message.content or "").strip():
                fail(index, "an assistant message needs content or tool calls")
        elif index and role == "system":
            fail(index, "only one system message is allowed")
    if pending:
        fail(len(messages), f"tool calls {sorted(pending)} were not answered")


class ToolSpec(Contract):
    """A tool offered to the model in OpenAI tool-calling format."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class ContextPlan(Contract):
    """What went into the prompt and what each part cost in tokens."""

    producer: Literal["pipeline"] = "pipeline"
    system_tokens: NonNegInt
    hot_state_tokens: NonNegInt
    hot_state_cap: NonNegInt
    history_tokens: NonNegInt
    history_kept: NonNegInt
    history_dropped: NonNegInt
    current_tokens: NonNegInt
    tools_tokens: NonNegInt
    artifact_count: NonNegInt
    total_tokens: NonNegInt
    budget_tokens: NonNegInt

    @model_validator(mode="after")
    def _sane(self) -> ContextPlan:
        def fail(invariant: str, field: str, detail: str) -> None:
            raise ContractViolation(invariant, field=field, producer=self.producer, detail=detail)

        parts = self.system_tokens + self.history_tokens + self.current_tokens + self.tools_tokens
        if self.total_tokens != parts:
            fail("counts_sane", "total_tokens", f"{self.total_tokens} != sum of parts {parts}")
        if self.hot_state_tokens > self.system_tokens:
            fail("counts_sane", "hot_state_tokens", "the hot state rides in the system prompt: it cannot be larger")
        if self.history_kept == 0 and self.history_tokens:
            fail("counts_sane", "history_tokens", "history tokens without any history message kept")
        if self.hot_state_tokens > self.hot_state_cap:
            fail("hot_state_within_cap", "hot_state_tokens", f"{self.hot_state_tokens} > cap {self.hot_state_cap}")
        if self.total_tokens > self.budget_tokens:
            fail("prompt_within_budget", "total_tokens", f"{self.total_tokens} > budget {self.budget_tokens}")
        return self


class AgentRequest(Contract):
    """One LLM call the pipeline asks for: the well-formed message list plus tools."""

    producer: Literal["pipeline"]
    trace_id: TraceId
    chat_id: Int64
    user_id: Int64
    model: str = Field(min_length=1)
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int = Field(gt=0)

    @model_validator(mode="after")
    def _well_formed(self) -> AgentRequest:
        check_message_list(self.messages, producer=self.producer)
        return self


class TokenUsage(Contract):
    """Tokens of one LLM attempt; `estimated` when the provider did not report them."""

    made_by: ClassVar[str] = "llm"
    input_tokens: NonNegInt
    output_tokens: NonNegInt
    total_tokens: NonNegInt
    estimated: bool = False

    @model_validator(mode="after")
    def _total(self) -> TokenUsage:
        if self.total_tokens != self.input_tokens + self.output_tokens:
            raise ContractViolation("counts_sane", field="total_tokens", producer=self.made_by,
                                    detail=f"total_tokens {self.total_tokens} != input_tokens "
                                           f"{self.input_tokens} + output_tokens {self.output_tokens}")
        return self


class LLMResult(Contract):
    """What the LLM adapter returns for one successful call."""

    producer: Literal["llm"]
    trace_id: TraceId
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str
    usage: TokenUsage
    model: str
    latency_s: NonNegFloat = 0.0

    @model_validator(mode="after")
    def _calls_unique(self) -> LLMResult:
        ids = [call.id for call in self.tool_calls]
        if len(set(ids)) != len(ids):
            raise ContractViolation("tool_call_ids_unique", field="tool_calls", producer=self.producer,
                                    detail="two tool calls share an id: their results could not be told apart")
        return self
