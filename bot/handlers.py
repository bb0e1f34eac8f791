"""Translate Telegram updates into core contracts: PTB objects in, `InboundMessage` out.

Every update goes through one handler (`on_update`) so that the journal, the trace and the
routing happen the same way for messages, documents, commands and the updates we ignore on
purpose. Nothing here decides policy: core does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from telegram import Message, Update
from telegram.ext import ContextTypes

from core.contracts import Attachment, InboundMessage, build

UpdateKind = Literal["message", "document", "command", "ignored"]


@dataclass(frozen=True)
class Routed:
    """What an update is, for the gateway: a turn, a command, or something ignored (and why)."""

    kind: UpdateKind
    reason: str = ""
    command: str = ""
    args: str = ""


async def on_update(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Hand every update to the gateway runtime (journal, trace, route, run)."""
    await context.application.bot_data["runtime"].process_update(update)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Last line of defence: log with the trace id; an update never kills the process."""
    context.application.bot_data["runtime"].log_unhandled(update, context.error)


def update_ids(update: Update) -> tuple[int | None, int | None]:
    chat = update.effective_chat
    user = update.effective_user
    return (chat.id if chat else None, user.id if user else None)


def _mentions(message: Message, username: str) -> bool:
    """Telegram marks @mentions as entities, but the handle in the text is what they point at."""
    return f"@{username}".lower() in (message.text or message.caption or "").lower()


def route(update: Update, *, bot_id: int, bot_username: str) -> Routed:
    """Decide what an update is. Groups: only mentions of the bot and replies to it."""
    message = update.message
    if message is None:
        if update.edited_message is not None:
            return Routed("ignored", "edited message")
        if update.channel_post is not None or update.edited_channel_post is not None:
            return Routed("ignored", "channel post")
        if update.my_chat_member is not None:
            return Routed("ignored", "membership change")
        return Routed("ignored", "unhandled update type")
    if message.from_user is None or message.from_user.is_bot:
        return Routed("ignored", "not from a person")
    text = message.text or message.caption or ""
    is_group = message.chat.type in ("group", "supergroup")
    if message.text and message.text.startswith("/"):
        head, _, args = message.text.partition(" ")
        name, _, target = head[1:].partition("@")
        if target and target.lower() != bot_username.lower():
            return Routed("ignored", "command for another bot")
        if name:
            return Routed("command", command=name.lower(), args=args.strip())
    if is_group:
        replied = message.reply_to_message
        to_bot = replied is not None and replied.from_user is not None and replied.from_user.id == bot_id
        if not to_bot and not _mentions(message, bot_username):
            return Routed("ignored", "group message not addressed to the bot")
    if message.document is not None:
        return Routed("document")
    if not text.strip():
        return Routed("ignored", "no text (sticker, photo, voice…)")
    return Routed("message")


def strip_mention(text: str, bot_username: str) -> str:
    handle = f"@{bot_username}"
    index = text.lower().find(handle.lower())
    if index < 0:
        return text
    return (text[:index] + text[index + len(handle):]).strip()


def to_inbound(update: Update, *, trace_id: str, bot_username: str, received_at) -> InboundMessage:  # noqa: ANN001
    """Translate a routed message; raises ContractViolation (named) when the update is malformed."""
    message = update.message
    assert message is not None and message.from_user is not None
    user = message.from_user
    attachment = None
    if message.document is not None:
        document = message.document
        attachment = build(Attachment, "inbound_attachment_valid", "channel", file_id=document.file_id,
                           file_name=(document.file_name or "document")[:512],
                           mime_type=(document.mime_type or "application/octet-stream")[:255],
                           size_bytes=max(0, document.file_size or 0))
    text = message.text or message.caption or ""
    if message.chat.type in ("group", "supergroup"):
        text = strip_mention(text, bot_username)
    return build(InboundMessage, "inbound_message_valid", "channel", update_id=update.update_id,
                 trace_id=trace_id, chat_id=message.chat.id, chat_type=message.chat.type, user_id=user.id,
                 user_name=(user.username or user.first_name or "")[:256], message_id=message.message_id,
                 text=text, attachment=attachment, received_at=received_at)
