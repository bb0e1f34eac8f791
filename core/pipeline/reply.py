"""reply: the final answer to the channel; an answer Telegram will not take now is kept, not lost.
Then, with /voice on and a spoken message, the same answer as a voice note (core/spoken.py)."""

from __future__ import annotations

from opentelemetry import trace

from core.failures.undelivered import keep_undelivered
from core.ports import DeliveryFailed
from core.spoken import speak_answer
from core.turn import Turn
from core.voice import heard_line


async def run(turn: Turn) -> None:
    text = turn.answer
    if turn.fallback_note:
        text = f"{text}\n\n{turn.fallback_note}"
    if turn.heard and turn.services.settings.voice_show_transcript:
        text = f"{heard_line(turn.heard)}\n\n{text}"
    if turn.late_of:
        text = f"(Sorry for the delay: this answers your message from {turn.late_of}.)\n\n{text}"
    try:
        await turn.send("final", text)
        turn.delivered = True
    except DeliveryFailed as failed:
        # The answer exists and is paid for: keep it in the outbox (retried until Telegram takes
        # it), or record that the user blocked the bot. Not a failed turn.
        await keep_undelivered(turn.services, chat_id=turn.inbound.chat_id, text=text, trace_id=turn.inbound.trace_id,
                         failed=failed)
        trace.get_current_span().set_attribute("reply.deferred", not failed.permanent)
        return
    await speak_answer(turn)  # /voice on and the user spoke: the answer also as a voice note
