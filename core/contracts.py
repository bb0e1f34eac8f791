"""The messages that cross a stage boundary, as strict pydantic models.

Every model is strict (no silent coercion), forbids extra fields, and is frozen where a value
must not change once made. Invariants are checked where the data is produced (the model
validators) and again where it is consumed (`TurnGuard`, and the pipeline re-validating what
it receives). A violation raises `ContractViolation`, naming the invariant, the field and the
producer; the pipeline turns that into an error reply with a ref and a DLQ entry.

Producers are literal fields: only the pipeline makes agent requests, escalations and memory
writes; only the LLM adapter makes LLM results; only a channel makes inbound messages.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
ChatType = Literal["private", "group", "supergroup", "channel", "console"]


class ContractViolation(Exception):
    """A message broke a named invariant; carries what, where and who made it."""

    kind = "contract_violation"

    def __init__(self, invariant: str, *, field: str, producer: str, detail: str = "") -> None:
        self.invariant, self.field, self.producer, self.detail = invariant, field, producer, detail
        super().__init__(f"contract violation [{invariant}] field={field} producer={producer}: {detail}")


class Contract(BaseModel):
    """Base of every boundary message: strict, closed, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def build(model: type[M], invariant: str, made_by: str, /, **data: Any) -> M:
    """Construct a contract, turning pydantic's error into a named ContractViolation."""
    try:
        return model(**data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise ContractViolation(invariant, field=field, producer=made_by, detail=first["msg"]) from None


M = TypeVar("M", bound=Contract)


class Attachment(Contract):
    """A document the user sent, before it is downloaded."""

    file_id: str = Field(min_length=1, max_length=512)
    file_name: str = Field(default="document", max_length=512)
    mime_type: str = Field(default="application/octet-stream", max_length=255)
    size_bytes: NonNegInt = 0


class InboundMessage(Contract):
    """What a channel hands to core: one user message, already translated from Telegram."""

    producer: Literal["channel"] = "channel"
    update_id: int
    trace_id: TraceId
    chat_id: int
    chat_type: ChatType
    user_id: int
    user_name: str = Field(default="", max_length=256)
    message_id: int | None = None
    text: str = Field(default="", max_length=200_000)
    attachment: Attachment | None = None
    received_at: datetime

    @model_validator(mode="after")
    def _not_empty(self) -> InboundMessage:
        if not self.text.strip() and self.attachment is None:
            raise ValueError("empty_user_turn: a message needs text or an attachment")
        return self


class ToolCall(Contract):
    """A function call the model asked for; arguments are a JSON object."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: dict[str, Any]


class ChatMessage(Contract):
    """One entry of the chat message list sent to the LLM."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


def check_message_list(messages: tuple[ChatMessage, ...] | list[ChatMessage]) -> None:
    """Invariant `message_list_well_formed`: one system message, first; tool results answer
    the assistant message just before them, each call id once; no empty user turn."""

    def fail(index: int, detail: str) -> None:
        raise ValueError(f"message_list_well_formed: messages[{index}]: {detail}")

    if not messages or messages[0].role != "system":
        fail(0, "the first message must be the system message")
    pending: set[str] = set()
    answered: set[str] = set()
    for index, message in enumerate(messages):
        if index and message.role == "system":
            fail(index, "only one system message is allowed")
        if message.role == "user" and not (message.content or "").strip():
            fail(index, "empty user turn")
        if message.role == "tool":
            if message.tool_call_id is None or message.tool_call_id not in pending:
                fail(index, f"tool result {message.tool_call_id!r} answers no open tool call")
            if message.tool_call_id in answered:
                fail(index, f"tool call {message.tool_call_id!r} answered twice")
            pending.discard(message.tool_call_id)  # type: ignore[arg-type]
            answered.add(message.tool_call_id)  # type: ignore[arg-type]
            continue
        if pending:
            fail(index, f"tool calls {sorted(pending)} were not answered")
        if message.role == "assistant":
            pending = {c.id for c in message.tool_calls}
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
        parts = self.system_tokens + self.history_tokens + self.current_tokens + self.tools_tokens
        if self.total_tokens != parts:
            raise ValueError(f"counts_sane: total_tokens {self.total_tokens} != sum of parts {parts}")
        if self.hot_state_tokens > self.hot_state_cap:
            raise ValueError(f"hot_state_within_cap: {self.hot_state_tokens} > {self.hot_state_cap}")
        if self.total_tokens > self.budget_tokens:
            raise ValueError(f"prompt_within_budget: {self.total_tokens} > {self.budget_tokens}")
        return self


class AgentRequest(Contract):
    """One LLM call the pipeline asks for: the well-formed message list plus tools."""

    producer: Literal["pipeline"]
    trace_id: TraceId
    chat_id: int
    user_id: int
    model: str = Field(min_length=1)
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int = Field(gt=0)

    @model_validator(mode="after")
    def _well_formed(self) -> AgentRequest:
        check_message_list(self.messages)
        return self


class TokenUsage(Contract):
    """Tokens of one LLM attempt; `estimated` when the provider did not report them."""

    input_tokens: NonNegInt
    output_tokens: NonNegInt
    total_tokens: NonNegInt
    estimated: bool = False

    @model_validator(mode="after")
    def _total(self) -> TokenUsage:
        if self.total_tokens != self.input_tokens + self.output_tokens:
            raise ValueError("counts_sane: total_tokens must equal input_tokens + output_tokens")
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


class ReplyEvent(Contract):
    """What core hands back to a channel: a streamed draft, the final answer, or a notice."""

    producer: Literal["pipeline"] = "pipeline"
    kind: Literal["typing", "draft", "final", "error", "notice"]
    trace_id: TraceId
    chat_id: int
    text: str = ""
    reply_to_message_id: int | None = None


class UsageRecord(Contract):
    """One LLM attempt's accounting row, successful or wasted."""

    producer: Literal["pipeline"] = "pipeline"
    at: datetime
    trace_id: TraceId
    chat_id: int
    user_id: int
    model: str
    usage: TokenUsage
    cost_usd: NonNegFloat | None
    wasted: bool


class DlqEntry(Contract):
    """A turn that could not be completed, kept with what is needed to run it again."""

    producer: Literal["pipeline"] = "pipeline"
    trace_id: TraceId
    chat_id: int
    user_id: int
    inbound: InboundMessage
    error_kind: str
    error_message: str = Field(max_length=2000)
    replayable: bool


class Escalation(Contract):
    """An alert for the operator: deduplicated by `key` within a cooldown."""

    producer: Literal["pipeline"]
    key: str = Field(min_length=1, max_length=200)
    kind: str
    severity: Literal["warning", "error", "critical", "info"]
    summary: str = Field(min_length=1, max_length=1000)
    action: str = ""
    trace_id: TraceId | None = None
    chat_id: int | None = None
    user_id: int | None = None


class HotStateWrite(Contract):
    """A structured patch of a chat's hot state, from the agent, the user or the gateway."""

    producer: Literal["pipeline"]
    source: Literal["agent", "user", "gateway"]
    trace_id: TraceId
    chat_id: int
    set_objective: str | None = Field(default=None, max_length=2000)
    add: tuple[tuple[str, str], ...] = ()  # (section, text)
    remove: tuple[int, ...] = ()  # item numbers as shown by /state


class TurnGuard:
    """Invariant `one_turn_identity`: everything a turn consumes has its trace, chat and user."""

    def __init__(self, inbound: InboundMessage) -> None:
        self.trace_id, self.chat_id, self.user_id = inbound.trace_id, inbound.chat_id, inbound.user_id

    def check(self, item: Contract, *, producer: str) -> None:
        for name in ("trace_id", "chat_id", "user_id"):
            value = getattr(item, name, None)
            if value is not None and value != getattr(self, name):
                raise ContractViolation("one_turn_identity", field=name, producer=producer,
                                        detail=f"{type(item).__name__}.{name}={value!r} in a turn of {getattr(self, name)!r}")
