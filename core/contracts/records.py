"""What a turn produces besides the conversation: replies, usage rows, DLQ entries, alerts,
hot-state writes, and the guard that keeps them all on the turn's own identity."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from core.contracts.base import Contract, ContractViolation, Int64, NonNegFloat, TraceId
from core.contracts.messages import InboundMessage, TokenUsage
from core.contracts.streamed import StreamedText


class ReplyEvent(Contract):
    """What core hands back to a channel: a streamed draft, the final answer, or a notice.

    A draft from the LLM stage carries the answer by reference (`streamed`): the same event is
    delivered again for every chunk, and the text is joined only when a channel reads it
    (`text_now`), so a channel that previews once a second does not pay per chunk."""

    model_config = ConfigDict(arbitrary_types_allowed=True)  # StreamedText: checked with isinstance
    producer: Literal["pipeline"] = "pipeline"
    kind: Literal["typing", "draft", "final", "error", "notice", "voice"]
    trace_id: TraceId
    chat_id: Int64
    text: str = ""
    reply_to_message_id: Int64 | None = None
    streamed: StreamedText | None = Field(default=None, exclude=True)  # a draft's growing answer
    audio: bytes | None = Field(default=None, exclude=True, repr=False)  # a "voice" event's Opus bytes

    def text_now(self) -> str:
        """The text to show: a streamed draft's answer as far as it has come, else `text`."""
        return self.text if self.streamed is None else self.streamed.text


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
    dlq_id: Int64 | None = None  # the dead-letter entry it is about: its alert gets Replay/Discard/Trace


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
