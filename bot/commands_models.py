"""/model: which model answers in this chat (LLM_MODELS lists the choices, LLM_MODEL is the default)."""

from __future__ import annotations

from bot.command_context import CommandContext, Reply


async def model(ctx: CommandContext) -> Reply:
    """`/model` shows the chat's model and the choices, `/model NAME` switches this chat only,
    `/model default` goes back to LLM_MODEL; the choice is stored and survives restarts."""
    services = ctx.services
    models, store = services.models, services.chat_models
    current = models.resolve(await store.get(ctx.chat_id))
    choices = ", ".join(f"{name} (default)" if name == models.default else name for name in models.choices)
    wanted = ctx.args.strip()
    if not wanted:
        return Reply(f"This chat uses {current}.\nChoices: {choices}\n/model NAME switches, /model default goes back.")
    if wanted.lower() == "default":
        await store.clear(ctx.chat_id)
        return Reply(f"This chat is back on the default model, {models.default}.")
    if wanted not in models.choices:
        return Reply(f"There is no model {wanted[:80]!r} here. Choices: {choices}")
    if wanted == models.default:
        await store.clear(ctx.chat_id)
    else:
        await store.set(ctx.chat_id, wanted, now=services.clock.iso())
    return Reply(f"This chat now uses {wanted}." + ("" if wanted == current else " Other chats are unchanged."))
