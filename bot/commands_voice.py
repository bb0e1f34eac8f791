"""/voice on|off: spoken answers in this chat (stored per chat, off by default)."""

from __future__ import annotations

from bot.command_context import CommandContext, Reply


async def voice(ctx: CommandContext) -> Reply:
    """`/voice on` also answers voice messages with a voice note (TTS_MODEL), `/voice off` stops
    that, `/voice` says which it is; the choice is stored and survives restarts."""
    services = ctx.services
    store = services.voice_replies
    wanted = ctx.args.strip().lower()
    if wanted in ("on", "off"):
        await store.set(ctx.chat_id, wanted == "on", now=services.clock.iso())
    if wanted == "on":
        return Reply("Spoken answers are on: when you send a voice message, I answer in text and also "
                     "as a voice note.")
    if wanted == "off":
        return Reply("Spoken answers are off: I answer in text only.")
    state = "on" if await store.is_on(ctx.chat_id) else "off"
    return Reply(f"Spoken answers are {state} in this chat. /voice on or /voice off switches "
                 "(they follow voice messages only).")
