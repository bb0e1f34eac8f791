"""One turn: what the stages of core/pipeline/ pass along, how a turn ends, and what a stage raises.

Every stage imports this module and the domain modules (context, failures, usage, store),
never another stage: only `core.pipeline` knows the order they run in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.access import refusal_text
from core.context.assemble import assemble, rebuild_smaller
from core.context.budget import ContextTooLarge
from core.contracts import (
    AgentRequest,
    ChatMessage,
    ContextPlan,
    InboundMessage,
    ReplyEvent,
    StreamedText,
    TurnGuard,
)
from core.failures.taxonomy import GatewayError, Kind
from core.tracing import short_ref
from core.usage import record_prompt_metrics

__all__ = ["NoticeError", "Outcome", "ReplyKind", "Turn", "TurnEnded", "refusal_text"]

if TYPE_CHECKING:
    from core.ports import Channel
    from core.services import Services

# "stopped": the user's /stop ended the answer midway (shown, kept and accounted: not a failure).
# "deferred": storage refused a write mid-turn; the journal row stays unfinished and the update
# runs again once storage takes writes (bot/storage_alarm.py), or at the next start.
Outcome = Literal["replied", "failed", "refused", "throttled", "notice", "dlq", "deferred", "stopped"]
ReplyKind = Literal["notice", "error", "final", "draft", "typing"]


class TurnEnded(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A stage ended the turn on purpose (refusal, throttle, notice); the reply was sent."""


class NoticeError(GatewayError):
    """A failure with a specific message for the user (a spend cap, a prompt that cannot fit)."""

    def __init__(self, kind: Kind, user_text: str, detail: str = "") -> None:
        super().__init__(kind, detail or user_text)
        self.user_text = user_text

    @classmethod
    def context_too_large(cls, error: ContextTooLarge) -> NoticeError:
        """The message cannot fit the model's window even alone: told in words people use."""
        return cls(Kind.context_too_large, error.user_message, detail=str(error))


@dataclass
class Turn:
    """Everything one turn carries between stages."""

    inbound: InboundMessage
    channel: Channel
    services: Services
    guard: TurnGuard
    user_text: str = ""
    late_of: str | None = None  # set when a DLQ entry is replayed: the answer comes late
    replay_dlq_id: int | None = None
    plan: ContextPlan | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    user_tokens: int = 0  # the current message's tokens, counted once by the context stage
    current_message: ChatMessage | None = None
    history_in_prompt: list[int] = field(default_factory=list)  # tokens of the history messages sent
    drafting: bool = False  # the answer has started streaming (no more "typing…")
    answer: str = ""
    tokens_spent: int = 0
    history_share: float = 1.0
    outcome: Outcome = "replied"
    # /stop (core/control.py): set from outside the turn; the llm stage reads what streamed so far.
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    streamed: StreamedText | None = None  # the current attempt's streamed text
    llm_request: AgentRequest | None = None  # the current attempt's request (its model)
    model: str = ""  # the chat's model (/model), set by the gate stage; "" means LLM_MODEL
    answered_by: str = ""  # a fallback model that answered this turn (later tool rounds start there)
    fallback_note: str = ""  # the line the reply adds after a fallback's answer
    delivered: bool = False  # the reply stage handed the answer to the channel (spoken answers follow it)
    viewed_images: list[str] = field(default_factory=list)  # view_image's pictures, for the next round
    heard: str = ""  # a voice note's transcript (the ingest stage): the answer quotes it first

    @property
    def ref(self) -> str:
        return short_ref(self.inbound.trace_id)

    async def send(self, kind: ReplyKind, text: str = "") -> None:
        await self.channel.deliver(ReplyEvent(kind=kind, trace_id=self.inbound.trace_id, chat_id=self.inbound.chat_id,
                                              text=text, reply_to_message_id=self.inbound.message_id))


async def plan_prompt(turn: Turn, *, smaller: bool = False) -> None:
    """The turn's prompt, token-budgeted, and its plan recorded (for /status and traces): built by
    the context stage, rebuilt with half the history (`smaller`) by the llm stage after the
    provider refused it. A message that cannot fit even alone ends the turn with a notice."""
    try:
        await rebuild_smaller(turn) if smaller else await assemble(turn)
    except ContextTooLarge as error:
        raise NoticeError.context_too_large(error) from None
    assert turn.plan is not None
    services, inbound = turn.services, turn.inbound
    await record_prompt_metrics(services.db, services.chats, trace_id=inbound.trace_id, chat_id=inbound.chat_id,
                          plan=turn.plan, now=services.clock.iso())
