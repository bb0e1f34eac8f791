"""/stop and /retry: controlling an answer.

`/stop` runs as a command, outside the chat's turn lock (core/pipeline), so it reaches the
running turn at once: the turn's LLM call is cancelled and the turn ends with what streamed,
marked "(stopped)" (core/control.py). `/retry` answers the chat's last message again with the
chat's current model: the last exchange is set aside while the new turn runs, then replaced by
the new one (one user message, the new answer); when the new turn does not answer (a refusal,
an outage), the old exchange is put back as it was.
"""

from __future__ import annotations

from bot.command_context import CommandContext, Reply

# The new turn answered: the old exchange goes. "stopped" answered too (a partial answer, kept).
ANSWERED = ("replied", "stopped")


async def stop(ctx: CommandContext) -> Reply:
    if ctx.services.running.stop(ctx.chat_id):
        return Reply("Stopping the answer.")
    return Reply("Nothing to stop: no answer is being written in this chat.")


async def retry(ctx: CommandContext) -> Reply:
    history = ctx.services.history
    if ctx.services.running.is_running(ctx.chat_id):
        return Reply("An answer is still being written here: /stop it first, or wait for it.")
    exchange = await history.last_exchange(ctx.chat_id)
    if not exchange or ctx.run_turn is None:
        return Reply("Nothing to retry: there is no earlier message in this conversation.")
    ids = [message.id for message in exchange]
    await history.set_aside(ctx.chat_id, ids)
    outcome = None
    try:
        outcome = await ctx.run_turn(exchange[0].content)
    finally:
        if outcome in ANSWERED:
            await history.delete(ctx.chat_id, ids)
        else:
            await history.set_aside(ctx.chat_id, ids, aside=False)
    return Reply()  # the new answer was the reply
