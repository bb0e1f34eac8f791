"""context: system prompt + hot state + the history that fits + the message, token-budgeted.
The assembly itself lives in core/context/assemble.py: the llm stage rebuilds it after an overflow."""

from __future__ import annotations

from core.context.assemble import assemble
from core.context.budget import ContextTooLarge
from core.turn import NoticeError, Turn
from core.usage import record_prompt_metrics


async def run(turn: Turn) -> None:
    try:
        assemble(turn)
    except ContextTooLarge as error:
        raise NoticeError.context_too_large(error) from None
    assert turn.plan is not None
    services, inbound = turn.services, turn.inbound
    record_prompt_metrics(services.db, services.chats, trace_id=inbound.trace_id, chat_id=inbound.chat_id,
                          plan=turn.plan, now=services.clock.iso())
