"""authorize: who may chat (ACCESS_POLICY, core/access.py); a refusal costs no LLM call.

A stranger's message is not sent to the model: under pairing they get their pairing code (and
the operator a request), in an unapproved group one line; they send it again once approved."""

from __future__ import annotations

from opentelemetry import trace

from core.turn import Turn, TurnEnded


async def run(turn: Turn) -> None:
    services, inbound = turn.services, turn.inbound
    allowed = inbound.chat_type == "console" or await services.is_allowed(inbound.user_id, inbound.chat_id)
    trace.get_current_span().set_attribute("auth.allowed", allowed)
    if not allowed:
        turn.outcome = "refused"
        text = await services.access.answer_stranger(user_id=inbound.user_id, chat_id=inbound.chat_id,
                                               chat_type=inbound.chat_type,
                                               name=inbound.user_first_name or inbound.user_name,
                                               username=inbound.user_name if inbound.user_name != inbound.user_first_name
                                               else None, title=inbound.chat_title)
        await turn.send("notice", text)
        raise TurnEnded("refused")
