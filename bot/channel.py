"""The Telegram channel: core's reply events become sent and edited Telegram messages.

Streaming: the first draft is sent as soon as text arrives, then the same message is edited
at most once per EDIT_INTERVAL_S per chat (Telegram's limit for one chat is about one message
per second; PTB's AIORateLimiter paces the bot overall but not per private chat), and never
with unchanged text ("message is not modified" is avoided, and ignored if it still happens).
The final answer is split into <= 4096-character parts and sent as HTML, falling back to the
same text as plain when Telegram rejects the markup. Telegram failures are mapped to
`DeliveryFailed` so core can keep the reply in the outbox (or stop writing to a chat that
blocked the bot).

Every message that is delivered whole (final answers, error replies, notices) gets two spans
in the turn's trace: `render` (Markdown to Telegram HTML parts) and `send` (the Bot API calls),
so a trace shows whether time went into formatting or into Telegram. Drafts and typing stay
inside the LLM span that produced them.

A draft costs nothing per streamed chunk beyond keeping a reference to the text so far: the
preview is cut from it only when pacing says an edit is due, so the work is bounded by the edits
sent, not by the chunks received. Replies retried by the outbox are Markdown like any answer and
go out as HTML with the same plain fallback; operator alerts stay plain text.

Delivered or not: PTB turns a failure to get an answer into NetworkError/TimedOut and a non-2xx
answer into a TelegramError subclass. Anything raised while reading a 2xx answer (a body that is
not JSON, a Message PTB cannot build) means Telegram took the call, so it counts as delivered:
raising DeliveryFailed there would keep the reply in the outbox or the DLQ and answer twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from opentelemetry import trace
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning

from bot.render import RenderedPart, preview_text, render_parts, split_text
from core.contracts import ReplyEvent
from core.ports import DeliveryFailed

log = logging.getLogger(__name__)
EDIT_INTERVAL_S = 1.0
FIRST_DRAFT_S = 0.6
MAX_STREAMS = 10_000
_CHAT_GONE = ("chat not found", "bot was kicked", "not enough rights to send", "user is deactivated")
# PTB raises a bare TelegramError with this text only when a 2xx answer's body is not JSON (an error
# answer that is not JSON still becomes BadRequest, NetworkError, ...).
_UNREADABLE_2XX = "Invalid server response"
# What building PTB's objects from a JSON answer missing fields (or with wrong types) raises.
_READING_ERRORS = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError)
T = TypeVar("T")


def _first_draft_at() -> float:
    # A draft is first shown FIRST_DRAFT_S after the first tokens: an answer complete by then goes
    # out as one message (no draft plus edit), a longer one still appears well within a second.
    return time.monotonic() - EDIT_INTERVAL_S + FIRST_DRAFT_S


@dataclass
class _Draft:
    message_id: int | None = None
    shown: str = ""  # the preview Telegram shows now
    edited_at: float = field(default_factory=_first_draft_at)
    # No more drafts: the chat refused the bot (the final reports it), the preview reached the
    # length limit (it cannot change any more), or the draft's message id is unknown.
    stopped: bool = False
    task: asyncio.Task | None = None  # the one draft call in flight, never more


def retry_after_s(error: RetryAfter) -> float:
    """Telegram's wait in seconds. PTB's `retry_after` is a timedelta with PTB_TIMEDELTA=true, else
    a number plus a deprecation warning that would only be noise in our logs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def answered_unreadably(error: Exception) -> bool:
    """Whether `error` was raised reading a 2xx answer of the Bot API: the call took effect."""
    if isinstance(error, TelegramError):
        return type(error) is TelegramError and error.message == _UNREADABLE_2XX
    return isinstance(error, _READING_ERRORS)


async def _taken(call: Awaitable[T], what: str) -> T | None:
    """Await a Bot API call; None when Telegram took it but its answer could not be read."""
    try:
        return await call
    except Exception as error:
        if not answered_unreadably(error):
            raise
        log.warning("Telegram took the %s but its answer could not be read (%s: %s); counted as delivered",
                    what, type(error).__name__, error)
        return None


def to_delivery_failed(error: TelegramError) -> DeliveryFailed:
    """Map a Telegram error to the taxonomy's delivery outcome."""
    if isinstance(error, Forbidden):  # blocked by the user, kicked from the group, user deactivated
        return DeliveryFailed(f"forbidden: {error.message}", permanent=True, chat_gone=True)
    if isinstance(error, RetryAfter):
        return DeliveryFailed("flood control", permanent=False, retry_after_s=retry_after_s(error))
    if isinstance(error, BadRequest):
        gone = any(marker in error.message.lower() for marker in _CHAT_GONE)
        return DeliveryFailed(f"bad request: {error.message}", permanent=True, chat_gone=gone)
    return DeliveryFailed(f"{type(error).__name__}: {error.message}", permanent=False)


class TelegramChannel:
    """Implements core's Channel and TextSender ports with python-telegram-bot."""

    def __init__(self, bot: Bot, *, tracer: trace.Tracer | None = None) -> None:
        self.bot = bot
        self.tracer = tracer or trace.NoOpTracer()
        self._drafts: dict[tuple[int, str], _Draft] = {}

    async def deliver(self, event: ReplyEvent) -> None:
        try:
            if event.kind == "typing":
                await _taken(self.bot.send_chat_action(event.chat_id, ChatAction.TYPING), "typing action")
            elif event.kind == "draft":
                self._draft(event)
            elif event.kind == "voice":
                await self._send_voice(event)
            else:  # final, error and notice: the whole text, rendered and sent in parts
                draft = self._drafts.pop((event.chat_id, event.trace_id), None)
                if draft is not None and draft.task is not None:
                    await asyncio.wait([draft.task])  # the draft's message id, before editing it
                await self._deliver_whole(event, draft if event.kind == "final" else None)
        except TelegramError as error:
            if event.kind == "typing":
                log.debug("ignoring typing failure: %s", error)
                return
            raise to_delivery_failed(error) from None

    def _draft(self, event: ReplyEvent) -> None:
        """When pacing says an edit is due, read the text (a streamed answer is joined only then),
        cut the preview once and start the one draft call in flight without waiting for it, so the
        model's stream never waits on Telegram. Per chunk this is O(1) in the answer's length."""
        key = (event.chat_id, event.trace_id)
        draft = self._drafts.get(key)
        if draft is None:
            if len(self._drafts) >= MAX_STREAMS:
                self._drafts.pop(next(iter(self._drafts)))
            draft = self._drafts[key] = _Draft()
        busy = draft.task is not None and not draft.task.done()
        now = time.monotonic()
        if draft.stopped or busy or now - draft.edited_at < EDIT_INTERVAL_S:
            return
        latest = event.text_now()  # a streamed answer is joined here: once per edit due, not per chunk
        if not latest or latest.isspace():
            return
        preview = preview_text(latest)
        if preview == draft.shown:
            return
        # A preview cut at the length limit is final: later text only grows past the cut.
        draft.stopped = preview != latest
        draft.edited_at = now
        draft.task = asyncio.create_task(self._flush_draft(event, draft, preview))

    async def _flush_draft(self, event: ReplyEvent, draft: _Draft, text: str) -> None:
        """Show `text` as the draft. Every failure ends here, logged once: a draft is only a
        preview (the final answer is what counts), and nobody awaits this task's exceptions."""
        try:
            if draft.message_id is None:
                message = await _taken(self.bot.send_message(event.chat_id, text, reply_parameters=_reply(event)),
                                       "draft")
                if message is None:  # shown, but with no id to edit: another draft would be a second message
                    draft.stopped = True
                    return
                draft.message_id = message.message_id
            else:
                await self._edit(event.chat_id, draft.message_id, text, html=False)
            draft.shown = text
        except Forbidden as error:
            draft.stopped = True
            log.debug("draft not shown, no more drafts: %s", error)
        except TelegramError as error:
            log.debug("draft not shown: %s", error)
        except Exception:  # not Telegram's refusal but a bug: say so, with the traceback, once
            log.exception("draft not shown")

    async def _deliver_whole(self, event: ReplyEvent, draft: _Draft | None) -> None:
        with self.tracer.start_as_current_span("render") as span:
            parts = render_parts(event.text) or []
            span.set_attributes({"reply.kind": event.kind, "reply.chars": len(event.text),
                                 "render.parts": len(parts)})
        with self.tracer.start_as_current_span("send") as span:
            span.set_attributes({"chat.id": event.chat_id, "send.parts": len(parts),
                                 "send.edits_draft": draft is not None and draft.message_id is not None})
            try:
                await self._send_parts(event.chat_id, parts, reply_to=event.reply_to_message_id, draft=draft)
            except TelegramError as error:  # recorded on the span, then mapped by deliver()
                span.set_attribute("error.type", type(error).__name__)
                raise

    async def _send_parts(self, chat_id: int, parts: list[RenderedPart], *, reply_to: int | None, draft: _Draft | None) -> None:
        for index, part in enumerate(parts):
            if index == 0 and draft is not None and draft.message_id is not None:
                if await self._edit_final(chat_id, draft.message_id, part.html, part.plain):
                    continue
            await self._send_one(chat_id, part.html, part.plain, reply_to=reply_to if index == 0 else None)

    async def _send_one(self, chat_id: int, html: str, plain: str, *, reply_to: int | None) -> None:
        reply = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
        try:
            await _taken(self.bot.send_message(chat_id, html, parse_mode=ParseMode.HTML, reply_parameters=reply),
                         "message")
        except BadRequest as error:
            if "can't parse entities" not in error.message.lower():
                raise
            log.info("Telegram rejected the markup (%s); sending plain text", error.message)
            await _taken(self.bot.send_message(chat_id, plain, reply_parameters=reply), "message")

    async def _edit_final(self, chat_id: int, message_id: int, html: str, plain: str) -> bool:
        """Turn the streamed draft into the first part; False if the draft is gone."""
        try:
            await self._edit(chat_id, message_id, html, html=True)
        except BadRequest as error:
            message = error.message.lower()
            if "can't parse entities" in message:
                await self._edit(chat_id, message_id, plain, html=False)
            elif "message to edit not found" in message or "message can't be edited" in message:
                return False
            else:
                raise
        return True

    async def _edit(self, chat_id: int, message_id: int, text: str, *, html: bool) -> None:
        try:
            await _taken(self.bot.edit_message_text(text, chat_id=chat_id, message_id=message_id,
                                                    parse_mode=ParseMode.HTML if html else None), "edit")
        except BadRequest as error:
            if "message is not modified" not in error.message.lower():
                raise

    async def _send_voice(self, event: ReplyEvent) -> None:
        """A spoken answer: the Opus bytes as a voice note (sendVoice), under the text answer."""
        if not event.audio:
            return
        with self.tracer.start_as_current_span("send", attributes={"reply.kind": "voice",
                                                                   "reply.audio_bytes": len(event.audio)}):
            await _taken(self.bot.send_voice(event.chat_id, event.audio, filename="answer.ogg",
                                             reply_parameters=_reply(event)), "voice note")

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        try:
            file = await self.bot.get_file(file_id)
            if file.file_size is not None and file.file_size > max_bytes:
                raise DeliveryFailed(f"file is larger than {max_bytes} bytes", permanent=True)
            data = bytes(await file.download_as_bytearray())
        except TelegramError as error:
            raise to_delivery_failed(error) from None
        if len(data) > max_bytes:
            raise DeliveryFailed(f"file is larger than {max_bytes} bytes", permanent=True)
        return data

    async def send_text(self, chat_id: int, text: str, *, markdown: bool = False,
                        reply_markup: dict[str, Any] | None = None) -> None:
        """TextSender for the outbox. A reply retried later is the model's Markdown: it goes out
        as HTML, with the plain fallback, like the first try; an operator alert is plain text.
        Inline buttons (`reply_markup`, Telegram's JSON) go on the last part."""
        try:
            if markdown:
                for part in render_parts(text):
                    await self._send_one(chat_id, part.html, part.plain, reply_to=None)
                return
            pieces = [piece for piece in split_text(text) if piece.strip()]  # Telegram refuses a blank message
            for index, piece in enumerate(pieces):
                markup = inline_keyboard(reply_markup) if index == len(pieces) - 1 else None
                await _taken(self.bot.send_message(chat_id, piece, reply_markup=markup), "message")
        except TelegramError as error:
            raise to_delivery_failed(error) from None


def inline_keyboard(markup: dict[str, Any] | None) -> InlineKeyboardMarkup | None:
    """Telegram's JSON for inline buttons (as core builds them) as PTB's object; None without buttons."""
    if not markup:
        return None
    rows = [[InlineKeyboardButton(str(button["text"]), callback_data=str(button["callback_data"]))
             for button in row] for row in markup.get("inline_keyboard", [])]
    return InlineKeyboardMarkup(rows) if rows else None


def _reply(event: ReplyEvent) -> ReplyParameters | None:
    if event.reply_to_message_id is None:
        return None
    return ReplyParameters(event.reply_to_message_id, allow_sending_without_reply=True)
