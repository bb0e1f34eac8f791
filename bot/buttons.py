"""Inline button presses (callback queries) in the operator's chat.

Only the operator's presses in the operator's chat count; anyone else is told so and nothing
changes. Every press is acknowledged with answerCallbackQuery, exactly once. The data says
what to do (core/callbacks.py: stateless, so a press after a restart works):
  Approve / Deny   decide the pairing request of that user or group (core/access.py)
  Replay / Discard act as /replay ID and /discard ID (the same command functions)
  Trace / Status   act as /trace REF and /status: the answer arrives as a new message
The pressed message is then edited to say who did what and when, and its buttons that no
longer apply are removed (all of them after a decision; Trace stays on a dead-letter alert).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from telegram import Bot, Update
from telegram.error import TelegramError

from bot import commands
from bot.channel import inline_keyboard
from bot.command_context import CommandContext, Reply
from bot.commands_access import decided_by
from core.callbacks import Press, parse
from core.replay import ReplayResult
from core.services import Services

log = logging.getLogger(__name__)
MAX_TEXT = 4096
NOT_YOURS = "Only the operator can use these buttons."
Ack = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Pressed:
    """A callback query, as plain values (what the handler needs, nothing of PTB)."""

    user_id: int
    user_name: str
    chat_id: int | None
    message_id: int | None
    text: str | None  # the pressed message's text, when Telegram sent it
    buttons: list[dict[str, str]]  # its buttons now, flattened
    data: object


@dataclass
class Handled:
    """What a press leads to: the answer to the press; the pressed message's new text (None:
    unchanged) and the buttons it keeps; a new message in the chat (trace, status)."""

    answer: str
    edit: str | None = None
    keep: list[dict[str, str]] | None = None
    reply: Reply | None = None


class ButtonPresses:
    def __init__(self, services: Services, bot: Bot, *, send_reply: Callable[..., Awaitable[None]],
                 replay: Callable[[int], Awaitable[ReplayResult]],
                 replay_all: Callable[[], Awaitable[list[ReplayResult]]]) -> None:
        self.services, self.bot, self.send_reply = services, bot, send_reply
        self.replay, self.replay_all = replay, replay_all

    async def press(self, update: Update, trace_id: str) -> str:
        """Handle one callback query end to end; returns the turn's outcome."""
        query = update.callback_query
        assert query is not None
        pressed = _pressed(update)
        answered = False

        async def ack(text: str) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            try:
                await self.bot.answer_callback_query(query.id, text=text[:200])
            except TelegramError as error:  # too late (15 s) or already answered: the press still acts
                log.info("callback query not answered: %s", error)

        try:
            handled = await self.handle(pressed, trace_id=trace_id, ack=ack)
        except Exception:
            await ack("Something went wrong; the bot's log has the details.")  # never left spinning
            raise
        await ack(handled.answer)
        trace.get_current_span().set_attribute("button.answer", handled.answer[:100])
        await self._edit(pressed, handled)
        if handled.reply is not None and pressed.chat_id is not None:
            await self.send_reply(pressed.chat_id, trace_id, handled.reply)
        return "replied"

    async def handle(self, pressed: Pressed, *, trace_id: str, ack: Ack) -> Handled:
        """Decide what the press does (and do it). Nothing happens for anyone but the operator."""
        services = self.services
        if not (services.is_operator_user(pressed.user_id) and pressed.chat_id is not None
                and services.is_operator_chat(pressed.chat_id)):
            return Handled(NOT_YOURS)
        press = parse(pressed.data)
        trace.get_current_span().set_attribute("button.action", press.action if press else "invalid")
        if press is None:
            return Handled("This button is not valid (any more).")
        by = decided_by(pressed.user_name, pressed.user_id)
        if press.action in ("approve", "deny"):
            text = await services.access.decide_pending(press.number, approve=press.action == "approve", by=by)
            return Handled(text, edit=_appended(pressed.text, text), keep=[])
        ctx = CommandContext(services=services, chat_id=pressed.chat_id or 0, user_id=pressed.user_id,
                             user_name=pressed.user_name, args=press.target, trace_id=trace_id,
                             replay=self.replay, replay_all=self.replay_all)
        if press.action == "trace":
            return Handled("The trace follows.", reply=await commands.trace_cmd(ctx))
        if press.action == "status":
            return Handled("Status follows.", reply=await commands.status(ctx))
        return await self._dead_letter(press, ctx, pressed, by=by, ack=ack)

    async def _dead_letter(self, press: Press, ctx: CommandContext, pressed: Pressed, *, by: str,
                           ack: Ack) -> Handled:
        entry = await self.services.dlq.get(press.number)
        traces = [b for b in pressed.buttons if str(b.get("callback_data", "")).startswith("trace:")]
        if entry is None:
            text = f"No DLQ entry {press.number}: it no longer exists."
            return Handled(text, edit=_appended(pressed.text, text), keep=traces)
        if press.action == "replay":
            if entry.status == "pending":
                await ack(f"Replaying #{entry.id}…")  # a replay can take longer than Telegram waits for the answer
            reply = await commands.replay(ctx)
        else:
            reply = await commands.discard(ctx)
        after = await self.services.dlq.get(press.number)
        keep = pressed.buttons if after is not None and after.status == "pending" else traces
        verb = "Replay" if press.action == "replay" else "Discard"
        line = f"{verb} by {by} at {self.services.clock.now():%H:%M} UTC: {reply.text}"
        return Handled(reply.text, edit=_appended(pressed.text, line), keep=keep)

    async def _edit(self, pressed: Pressed, handled: Handled) -> None:
        """Show the outcome on the pressed message; remove the buttons that no longer apply."""
        if pressed.chat_id is None or pressed.message_id is None or handled.keep is None:
            return
        markup = inline_keyboard({"inline_keyboard": [handled.keep]} if handled.keep else None)
        try:
            if handled.edit is not None and pressed.text is not None:
                await self.bot.edit_message_text(handled.edit[:MAX_TEXT], chat_id=pressed.chat_id,
                                                 message_id=pressed.message_id, reply_markup=markup)
            else:
                await self.bot.edit_message_reply_markup(chat_id=pressed.chat_id, message_id=pressed.message_id,
                                                         reply_markup=markup)
        except TelegramError as error:  # the message is too old to edit, or unchanged: the press still counted
            log.info("pressed message not edited: %s", error)


def _appended(text: str | None, line: str) -> str | None:
    if text is None:
        return None
    room = MAX_TEXT - len(line) - 2
    return f"{text[:room]}\n\n{line}"


def _pressed(update: Update) -> Pressed:
    query = update.callback_query
    assert query is not None
    user = query.from_user
    message: Any = query.message
    chat_id = getattr(getattr(message, "chat", None), "id", None)
    message_id = getattr(message, "message_id", None)
    text = getattr(message, "text", None)
    markup = getattr(message, "reply_markup", None)
    buttons = [{"text": b.text, "callback_data": b.callback_data}
               for row in (getattr(markup, "inline_keyboard", None) or ()) for b in row
               if isinstance(getattr(b, "callback_data", None), str)]
    return Pressed(user_id=user.id, user_name=user.first_name or user.username or "",
                   chat_id=chat_id if isinstance(chat_id, int) else None,
                   message_id=message_id if isinstance(message_id, int) else None,
                   text=text if isinstance(text, str) else None, buttons=buttons, data=query.data)
