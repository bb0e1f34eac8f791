"""persist: both sides of the exchange join the history, in one commit (never one without the other)."""

from __future__ import annotations

from core.context.text_artifacts import LONG_TEXT_TOKENS, store_text
from core.turn import Turn


async def run(turn: Turn) -> None:
    async with turn.services.db.transaction():
        await _persist_exchange(turn)


async def _persist_exchange(turn: Turn) -> None:
    """After a successful answer: both sides of the exchange join the history (counted once); a
    very long answer is stored as an artifact and the history keeps its reference and summary."""
    services, inbound = turn.services, turn.inbound
    now = services.clock.iso()
    user_tokens = turn.user_tokens or services.counter.count_message(turn.user_text)
    await services.history.append(chat_id=inbound.chat_id, role="user", content=turn.user_text, tokens=user_tokens,
                            trace_id=inbound.trace_id, update_id=inbound.update_id, now=now)
    stored = turn.answer
    answer_tokens = services.counter.count(turn.answer)
    if answer_tokens > LONG_TEXT_TOKENS:
        info = await store_text(turn, turn.answer, label="long answer", kind="long_answer")
        stored = f"[My long answer ({answer_tokens} tokens) is stored as {info.ref}. Summary: {info.summary}]"
        answer_tokens = services.counter.count(stored)
    await services.history.append(chat_id=inbound.chat_id, role="assistant", content=stored,
                            tokens=answer_tokens + 4, trace_id=inbound.trace_id, update_id=inbound.update_id,
                            now=now)
