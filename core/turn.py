"""One turn: what the stages of core/pipeline/ pass along, how a turn ends, and what a stage raises.

Every stage imports this module and the domain modules (context, failures, usage, store),
never another stage: only `core.pipeline` knows the order they run in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.access import refusal_text
from core.context.budget import ContextTooLarge
from core.contracts import ChatMessage, ContextPlan, InboundMessage, ReplyEvent, TurnGuard
from core.failures.taxonomy import GatewayError, Kind
from core.tracing import short_ref

__all__ = ["NoticeError", "Outcome", "ReplyKind", "Turn", "TurnEnded", "refusal_text"]

if TYPE_CHECKING:
    from core.ports import Channel
    from core.services import Services

# "deferred": storage refused a write mid-turn; the journal row stays unfinished and the update
# runs again once storage takes writes (bot/storage_alarm.py), or at the next start.
Outcome = Literal["replied", "failed", "refused", "throttled", "notice", "dlq", "deferred"]
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

    @property
    def ref(self) -> str:
        return short_ref(self.inbound.trace_id)

    async def send(self, kind: ReplyKind, text: str = "") -> None:
        await self.channel.deliver(ReplyEvent(kind=kind, trace_id=self.inbound.trace_id, chat_id=self.inbound.chat_id,
                                              text=text, reply_to_message_id=self.inbound.message_id))
