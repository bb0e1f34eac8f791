"""Translate Telegram updates into core contracts: PTB objects in, `InboundMessage` out.

Every update goes through one handler (`on_update`) so that the journal, the trace and the
routing happen the same way for messages, documents, commands and the updates we ignore on
purpose. Nothing here decides policy: core does.

Nothing here trusts the update either: a webhook body is any JSON, and PTB's `de_json` does
not check types (an int where text goes, a message without a chat). `parse_update` turns a
raw body into an Update or says why it is not one, `route` names what an update is (or that it
is malformed), and `to_inbound` fails with a named ContractViolation, never a TypeError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from telegram import Bot, Chat, Message, MessageEntity, Update, User
from telegram.ext import ContextTypes

from bot.media import UNREADABLE, described_text, has_media, is_unreadable, media_attachment
from core.contracts import Attachment, ContractViolation, InboundMessage, build

UpdateKind = Literal["message", "document", "command", "button", "ignored", "malformed"]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_NESTING = 64  # far deeper than any real update; deeper JSON is junk, not a message
# Update types the gateway recognises and leaves alone, with the reason the journal records.
IGNORED_TYPES = (
    ("edited_message", "edited message"), ("channel_post", "channel post"),
    ("edited_channel_post", "channel post"), ("my_chat_member", "membership change"),
    ("chat_member", "membership change"), ("chat_join_request", "join request"),
    ("message_reaction", "reaction"), ("message_reaction_count", "reaction"), ("poll", "poll"),
    ("poll_answer", "poll answer"), ("callback_query", "callback query"), ("inline_query", "inline query"),
    ("chosen_inline_result", "inline result"), ("business_message", "business message"),
    ("edited_business_message", "business message"), ("business_connection", "business connection"),
    ("deleted_business_messages", "business message"), ("chat_boost", "chat boost"),
    ("removed_chat_boost", "chat boost"), ("shipping_query", "payment"), ("pre_checkout_query", "payment"),
    ("purchased_paid_media", "payment"),
)


@dataclass(frozen=True)
class Routed:
    """What an update is, for the gateway: a turn, a command, or something ignored (and why)."""

    kind: UpdateKind
    reason: str = ""
    command: str = ""
    args: str = ""


@dataclass
class BotIdentity:
    """Who the bot is (from getMe at start): routing needs it to see mentions and replies."""

    bot_id: int = 0
    username: str = ""


@dataclass(frozen=True)
class Parsed:
    """A raw update body after parsing: the Update, or why it is not usable.

    `update_id` is set whenever the body names a valid one, so a malformed update can still be
    journaled (kept, marked failed) under its id: nothing a user sent disappears silently."""

    update: Update | None
    update_id: int | None
    problem: str = ""
    data: dict[str, Any] | None = None  # the body, cleaned so that it can be stored


def is_telegram_id(value: object) -> bool:
    """A real int (not a bool) that SQLite can store."""
    return type(value) is int and INT64_MIN <= value <= INT64_MAX


def clean_json(value: Any, depth: int = 0) -> Any:
    """The body with lone UTF-16 surrogates replaced (JSON can carry them; UTF-8 cannot)."""
    if depth > MAX_NESTING:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if isinstance(value, dict):
        return {clean_json(str(key), depth + 1): clean_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item, depth + 1) for item in value]
    return value


def parse_update(data: object, bot: Bot) -> Parsed:
    """Parse a raw body (webhook or test) into an Update; never raises."""
    if not isinstance(data, dict):
        return Parsed(None, None, "not a JSON object")
    update_id = data.get("update_id")
    if not is_telegram_id(update_id):
        return Parsed(None, None, "no valid update_id")
    try:
        clean = clean_json(data)
    except (ValueError, RecursionError) as error:
        return Parsed(None, update_id, f"malformed update ({error})", data={"update_id": update_id})
    try:
        update = Update.de_json(clean, bot)
    except Exception as error:  # noqa: BLE001 - PTB raises anything on junk; the sender is at fault
        # PTB's message says what it missed (e.g. a field a newer Bot API made required): keep it.
        return Parsed(None, update_id, f"malformed update ({type(error).__name__}: {error})"[:300], data=clean)
    if not isinstance(update, Update) or update.update_id != update_id:
        return Parsed(None, update_id, "malformed update", data=clean)
    return Parsed(update, update_id, data=clean)


def journal_raw(update: Update) -> dict[str, Any]:
    """The update as a dict the journal can store (and `recover` can parse again)."""
    try:
        return clean_json(update.to_dict())
    except Exception as error:  # noqa: BLE001 - keep what we can rather than fail the intake
        return {"update_id": update.update_id, "unstorable": type(error).__name__}


async def on_update(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Hand every update to the gateway runtime (journal, trace, route, run)."""
    await context.application.bot_data["runtime"].process_update(update)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Last line of defence: log with the trace id; an update never kills the process."""
    context.application.bot_data["runtime"].log_unhandled(update, context.error)


def update_ids(update: Update) -> tuple[int | None, int | None]:
    """The chat and user an update belongs to, when it names valid ones."""
    try:
        chat, user = update.effective_chat, update.effective_user
    except Exception:  # noqa: BLE001 - PTB walks the update's attributes; junk can break that
        return (None, None)
    chat_id, user_id = getattr(chat, "id", None), getattr(user, "id", None)
    return (chat_id if is_telegram_id(chat_id) else None, user_id if is_telegram_id(user_id) else None)


def _shape_problem(message: Message) -> str:
    """What makes a message unusable (PTB does not check types), or "" when it is sound."""
    if not is_telegram_id(message.message_id):
        return "message without a valid message_id"
    if not isinstance(message.chat, Chat) or not is_telegram_id(message.chat.id) \
            or not isinstance(message.chat.type, str):
        return "message without a valid chat"
    if message.from_user is not None and (not isinstance(message.from_user, User)
                                          or not is_telegram_id(message.from_user.id)):
        return "message from a sender without a valid id"
    for name in ("text", "caption"):
        if getattr(message, name) is not None and not isinstance(getattr(message, name), str):
            return f"message {name} is not a string"
    return ""


def _mentions(message: Message, *, bot_id: int, username: str) -> bool:
    """Addressed to the bot by an entity Telegram marked: a `mention` of exactly the bot's username
    (any case), or a `text_mention` of the bot's user id. A substring test would let
    `@gateway_bot_two` wake `@gateway_bot`. PTB's parse_*entities cut the text by UTF-16 offsets,
    as Telegram counts them, so an emoji before the mention does not shift it."""
    try:
        found = {**message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION]),
                 **message.parse_caption_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])}
    except Exception:  # noqa: BLE001 - junk entities (PTB does not check types) address nobody
        return False
    for entity, text in found.items():
        if entity.type == MessageEntity.MENTION and username and text[1:].lower() == username.lower():
            return True
        if entity.type == MessageEntity.TEXT_MENTION and getattr(entity.user, "id", None) == bot_id:
            return True
    return False


def route(update: Update, *, bot_id: int, bot_username: str) -> Routed:
    """Decide what an update is. Groups: only mentions of the bot and replies to it."""
    message = update.message
    if message is None and update.callback_query is not None:
        query = update.callback_query
        if getattr(query, "from_user", None) is None or not is_telegram_id(getattr(query.from_user, "id", None)):
            return Routed("malformed", "callback query without a valid sender")
        return Routed("button")  # an inline button was pressed (bot/buttons.py)
    if message is None:
        for name, reason in IGNORED_TYPES:
            if getattr(update, name, None) is not None:
                return Routed("ignored", reason)
        return Routed("ignored", "unhandled update type")
    if not isinstance(message, Message):
        return Routed("malformed", "message is not a message object")
    problem = _shape_problem(message)
    if problem:
        return Routed("malformed", problem)
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
        replied_from = getattr(replied, "from_user", None)
        to_bot = replied_from is not None and getattr(replied_from, "id", None) == bot_id
        if not to_bot and not _mentions(message, bot_id=bot_id, username=bot_username):
            return Routed("ignored", "group message not addressed to the bot")
    if message.document is not None or message.photo or has_media(message):
        return Routed("document")
    if not text.strip() and not described_text(message):
        if not is_group and is_unreadable(message):
            return Routed("ignored", UNREADABLE)  # answered with a short reply (bot/routing.py)
        return Routed("ignored", "no text (service message…)")
    return Routed("message")


def strip_mention(text: str, bot_username: str) -> str:
    """The text without the first @mention of the bot (the whole handle, not a longer one's prefix)."""
    if not bot_username:
        return text
    handle = re.compile(rf"@{re.escape(bot_username)}(?![A-Za-z0-9_])", re.IGNORECASE)
    return handle.sub("", text, count=1).strip() if handle.search(text) else text


def to_inbound(update: Update, *, trace_id: str, bot_username: str, received_at) -> InboundMessage:  # noqa: ANN001
    """Translate a routed message; raises ContractViolation (named) when the update is malformed."""
    try:
        return _to_inbound(update, trace_id=trace_id, bot_username=bot_username, received_at=received_at)
    except ContractViolation:
        raise
    except Exception as error:  # noqa: BLE001 - a PTB object with junk inside (an int for a file name...)
        raise ContractViolation("inbound_message_valid", field="message", producer="channel",
                                detail=f"cannot translate the update ({type(error).__name__})") from None


def _to_inbound(update: Update, *, trace_id: str, bot_username: str, received_at) -> InboundMessage:  # noqa: ANN001
    message = update.message
    problem = "no message" if message is None else _shape_problem(message) or (
        "no sender" if message.from_user is None else "")
    if problem:
        raise ContractViolation("inbound_message_valid", field="message", producer="channel", detail=problem)
    assert message is not None and message.from_user is not None
    user = message.from_user
    attachment = media_attachment(message)
    if attachment is None and message.document is not None:
        document = message.document
        attachment = build(Attachment, "inbound_attachment_valid", "channel", file_id=document.file_id,
                           file_name=(document.file_name or "document")[:512],
                           mime_type=(document.mime_type or "application/octet-stream")[:255],
                           size_bytes=max(0, document.file_size or 0))
    elif message.photo:
        attachment = _photo(message)
    text = message.text or message.caption or ""
    if message.chat.type in ("group", "supergroup"):
        text = strip_mention(text, bot_username)
    described = described_text(message)
    if described:
        text = f"{described}\n\n{text}".strip()
    name = user.username or user.first_name or ""
    return build(InboundMessage, "inbound_message_valid", "channel", update_id=update.update_id,
                 trace_id=trace_id, chat_id=message.chat.id, chat_type=message.chat.type, user_id=user.id,
                 user_name=name[:256] if isinstance(name, str) else name, message_id=message.message_id,
                 user_first_name=_text(user.first_name), chat_title=_text(message.chat.title),
                 text=text, attachment=attachment, received_at=received_at,
                 spoken=attachment is not None and attachment.spoken)


def _photo(message: Message) -> Attachment:
    """The largest size Telegram offers of a photo, as an image attachment."""
    largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
    return build(Attachment, "inbound_attachment_valid", "channel", file_id=largest.file_id,
                 file_name="photo.jpg", mime_type="image/jpeg", size_bytes=max(0, largest.file_size or 0))


def _text(value: object) -> str:
    """A name Telegram sent, or "" when it is not a string (PTB does not check types)."""
    return value[:256] if isinstance(value, str) else ""
