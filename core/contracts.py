"""The messages that cross a stage boundary, as strict pydantic models.

Every model is strict (no silent coercion), forbids extra fields, and is frozen where a value
must not change once made. Invariants are checked where the data is produced (the model
validators) and again where it is consumed (`TurnGuard`, and the pipeline re-validating what
it receives). A violation raises `ContractViolation`, naming the invariant, the field and the
producer; the pipeline turns that into an error reply with a ref and a DLQ entry.

One error type for all of it: constructing or re-validating a contract never raises pydantic's
ValidationError. Its errors are named after the invariant they break (`role_exclusivity` for a
wrong producer, `counts_sane` for a negative count or cost, `no_unknown_fields`,
`text_is_unicode`, `immutable` for an attempted change), else `<model>_valid`. The named
invariants: role_exclusivity, message_list_well_formed, one_turn_identity, counts_sane,
hot_state_within_cap, prompt_within_budget, no_empty_user_turn, tool_call_ids_unique; the LLM
adapter adds llm_response_has_choices and tool_call_named for what a provider returns. (Tool
arguments the model got wrong are not violations: core/context/tools.py answers them to the model.)

Producers are literal fields: only the pipeline makes agent requests, escalations and memory
writes; only the LLM adapter makes LLM results; only a channel makes inbound messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

TraceId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Telegram ids fit in 52 bits; the bound is what SQLite can store, so a bigger number fails here,
# named, instead of as an OverflowError deep inside storage.
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
ChatType = Literal["private", "group", "supergroup", "channel", "console"]


class ContractViolation(Exception):
    """A message broke a named invariant; carries what, where and who made it."""

    kind = "contract_violation"

    def __init__(self, invariant: str, *, field: str, producer: str, detail: str = "") -> None:
        self.invariant, self.field, self.producer, self.detail = invariant, field, producer, detail
        super().__init__(f"contract violation [{invariant}] field={field} producer={producer}: {detail}")


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _violation(model: type[Contract], error: ValidationError, data: Any) -> ContractViolation:
    """Name pydantic's first error after the invariant it breaks (never echoing the input)."""
    first = error.errors(include_url=False, include_input=False)[0]
    loc, kind = first["loc"], first["type"]
    ctx = first.get("ctx") or {}
    if loc and loc[0] == "producer":
        invariant = "role_exclusivity"
    elif kind == "extra_forbidden":
        invariant = "no_unknown_fields"
    elif kind == "string_unicode":  # lone surrogates: JSON can carry them, UTF-8 storage cannot
        invariant = "text_is_unicode"
    elif (kind in ("greater_than_equal", "greater_than") and 0 in (ctx.get("ge"), ctx.get("gt"))) \
            or kind == "finite_number":
        invariant = "counts_sane"
    else:
        invariant = f"{_snake(model.__name__)}_valid"
    field = ".".join(str(part) for part in loc) or model.__name__
    return ContractViolation(invariant, field=field, producer=model.producer_of(data), detail=first["msg"])


class Contract(BaseModel):
    """Base of every boundary message: strict, closed, immutable; violations are named."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    # Who makes this kind of message when it has no `producer` field of its own.
    made_by: ClassVar[str] = "pipeline"

    def __init__(self, /, **data: Any) -> None:
        # What BaseModel.__init__ does (our validators always return self), with the error named.
        try:
            self.__pydantic_validator__.validate_python(data, self_instance=self)
        except ValidationError as error:
            raise _violation(type(self), error, data) from None

    # Tell pydantic this is not a custom __init__: validation of nested models and
    # model_validate keep pydantic's fast path instead of calling back into Python.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Consumer-side re-validation: pydantic's errors become named ContractViolations."""
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as error:
            raise _violation(cls, error, obj) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as error:
            raise _violation(cls, error, {}) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise ContractViolation("immutable", field=name, producer=self.producer_of(self.__dict__),
                                detail=f"{type(self).__name__} is frozen: make a new one instead")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    @classmethod
    def producer_of(cls, data: Any) -> str:
        """The producer a message claims (its `producer` field), else who makes this kind."""
        claimed = data.get("producer") if isinstance(data, Mapping) else None
        if isinstance(claimed, str):
            return claimed[:40]
        field = cls.model_fields.get("producer")
        return field.default if field is not None and isinstance(field.default, str) else cls.made_by


M = TypeVar("M", bound=Contract)


def build(model: type[M], invariant: str, made_by: str, /, **data: Any) -> M:
    """Construct a contract at its producer; a schema error is reported under `invariant`
    (the named invariants, such as role_exclusivity or counts_sane, keep their own names)."""
    try:
        return model(**data)
    except ContractViolation as violation:
        name = invariant if violation.invariant == f"{_snake(model.__name__)}_valid" else violation.invariant
        raise ContractViolation(name, field=violation.field, producer=made_by, detail=violation.detail) from None


class Attachment(Contract):
    """A document the user sent, before it is downloaded."""

    made_by: ClassVar[str] = "channel"
    file_id: str = Field(min_length=1, max_length=512)
    file_name: str = Field(default="document", max_length=512)
    mime_type: str = Field(default="application/octet-stream", max_length=255)
    size_bytes: NonNegInt = 0


class InboundMessage(Contract):
    """What a channel hands to core: one user message, already translated from Telegram."""

    producer: Literal["channel"] = "channel"
    update_id: Int64
    trace_id: TraceId
    chat_id: Int64
    chat_type: ChatType
    user_id: Int64
    user_name: str = Field(default="", max_length=256)
    message_id: Int64 | None = None
    text: str = Field(default="", max_length=200_000)
    attachment: Attachment | None = None
    received_at: datetime

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
            if not (message.content or "").strip():
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


class ReplyEvent(Contract):
    """What core hands back to a channel: a streamed draft, the final answer, or a notice."""

    producer: Literal["pipeline"] = "pipeline"
    kind: Literal["typing", "draft", "final", "error", "notice"]
    trace_id: TraceId
    chat_id: Int64
    text: str = ""
    reply_to_message_id: Int64 | None = None


class UsageRecord(Contract):
    """One LLM attempt's accounting row, successful or wasted."""

    producer: Literal["pipeline"] = "pipeline"
    at: datetime
    trace_id: TraceId
    chat_id: Int64
    user_id: Int64
    model: str
    usage: TokenUsage
    cost_usd: NonNegFloat | None
    wasted: bool


class DlqEntry(Contract):
    """A turn that could not be completed, kept with what is needed to run it again."""

    producer: Literal["pipeline"] = "pipeline"
    trace_id: TraceId
    chat_id: Int64
    user_id: Int64
    inbound: InboundMessage
    error_kind: str
    error_message: str = Field(max_length=2000)
    replayable: bool

    @model_validator(mode="after")
    def _same_turn(self) -> DlqEntry:
        TurnGuard(self.inbound).check(self, producer=self.producer)
        return self


class Escalation(Contract):
    """An alert for the operator: deduplicated by `key` within a cooldown."""

    producer: Literal["pipeline"]
    key: str = Field(min_length=1, max_length=200)
    kind: str
    severity: Literal["warning", "error", "critical", "info"]
    summary: str = Field(min_length=1, max_length=1000)
    action: str = ""
    trace_id: TraceId | None = None
    chat_id: Int64 | None = None
    user_id: Int64 | None = None


class HotStateWrite(Contract):
    """A structured patch of a chat's hot state, from the agent, the user or the gateway."""

    producer: Literal["pipeline"]
    source: Literal["agent", "user", "gateway"]
    trace_id: TraceId
    chat_id: Int64
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
