"""authorize: allowed users and the operator only; a refusal costs no LLM call."""

from __future__ import annotations

from opentelemetry import trace

from core.turn import Turn, TurnEnded, refusal_text


async def run(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    allowed = inbound.chat_type == "console" or services.is_allowed(inbound.user_id)
    trace.get_current_span().set_attribute("auth.allowed", allowed)
    if not allowed:
        turn.outcome = "refused"
        await turn.send("notice", refusal_text(inbound.user_id))
        raise TurnEnded("refused")
