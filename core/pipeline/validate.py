"""validate: the consumer-side check of the inbound contract, before anything is spent (fail fast)."""

from __future__ import annotations

from opentelemetry import trace

from core.contracts import InboundMessage
from core.turn import Turn


async def run(turn: Turn) -> None:
    """Re-check the inbound contract and the turn's identity."""
    inbound = InboundMessage.model_validate(turn.inbound.model_dump(), strict=False)
    turn.guard.check(inbound, producer=inbound.producer)
    span = trace.get_current_span()
    span.set_attributes({"chat.id": inbound.chat_id, "user.id": inbound.user_id,
                         "message.chars": len(inbound.text), "message.has_attachment": inbound.attachment is not None})
    turn.user_text = inbound.text
