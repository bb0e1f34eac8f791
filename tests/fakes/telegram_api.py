"""A local stand-in for the Telegram Bot API, for end-to-end tests.

Why it exists: the bot must be exercised over real HTTP exactly as it talks to
``api.telegram.org`` (python-telegram-bot's own request layer, URL layout, form
encoding, error mapping), without internet access and with the failure modes we
need on demand (429 with ``retry_after``, 403 blocked, 409 conflict, rejected
HTML, outages). The server therefore mimics the *observable* behaviour of the
Bot API where the bot depends on it: the ``{"ok": ..}`` envelope, Telegram's
error texts, offset-based update confirmation, long polling, per-chat message
ids, the 4096 UTF-16 code unit limit and the HTML entity parser's strictness.

Threading model: the aiohttp server runs on its own event loop in a background
thread so that plain synchronous pytest tests (which drive a bot *process*) can
use it. Every public method takes ``self._lock``; request handlers take it for
short, non-awaiting critical sections only.
"""

from __future__ import annotations

import asyncio
import copy
import html.parser
import itertools
import json
import logging
import re
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NamedTuple, Self, TypeVar

from aiohttp import web

__all__ = [
    "BackgroundServer",
    "BotMessage",
    "Call",
    "FakeTelegram",
    "HtmlParseError",
    "SentDocument",
    "UploadedFile",
    "parse_html",
    "post_json",
    "utf16_len",
]

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

MAX_MESSAGE_UTF16 = 4096
MAX_CAPTION_UTF16 = 1024
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile refuses bigger files ("file is too big")


# --------------------------------------------------------------------------------------
# Background server plumbing (shared with tests/fakes/llm_api.py)
# --------------------------------------------------------------------------------------


class BackgroundServer:
    """An aiohttp application served from a private event loop in a daemon thread.

    Why: the e2e tests are synchronous (they drive a subprocess), yet the fakes
    must answer concurrently (long polling, streaming). A dedicated loop keeps the
    fake independent of whatever loop pytest-asyncio may run in the test thread.
    Subclasses implement :meth:`_make_app`; long waits inside handlers should use
    :meth:`_sleep` so that :meth:`stop` interrupts them instead of hanging.
    """

    #: seconds aiohttp waits for in-flight handlers at shutdown before cancelling them
    shutdown_timeout: float = 2.0

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._port: int | None = None
        self._server_errors: list[str] = []
        #: guards all mutable state; subclasses use it for their own state too
        self._lock = threading.RLock()

    # -- to implement -----------------------------------------------------------------
    def _make_app(self) -> web.Application:
        raise NotImplementedError

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound TCP port (only valid after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` without any path."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        ready = threading.Event()
        startup_error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:  # report to the starting thread, never swallow
                startup_error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._drain_loop(loop)

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}-loop", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start within 10 s")
        if startup_error:
            self._thread.join(1)
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from startup_error[0]
        return self

    def stop(self) -> None:
        """Stop serving, interrupt pending waits and join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._astop(), loop)
            try:
                fut.result(self.shutdown_timeout + 5)
            except Exception:
                _LOG.exception("%s: error during shutdown", type(self).__name__)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def server_errors(self) -> list[str]:
        """Tracebacks of handler exceptions (each also answered as HTTP 500).

        Why: a bug in the fake must not masquerade as a bot bug; tests may assert
        this list is empty.
        """
        with self._lock:
            return list(self._server_errors)

    # -- helpers for subclasses ----------------------------------------------------------
    async def _sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns False early when the server is stopping."""
        if seconds <= 0:
            return not self._is_closing()
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def _is_closing(self) -> bool:
        return self._closing is not None and self._closing.is_set()

    def _record_server_error(self, where: str, exc: BaseException) -> None:
        text = f"{where}: " + "".join(traceback.format_exception(exc))
        _LOG.error("%s internal error: %s", type(self).__name__, text)
        with self._lock:
            self._server_errors.append(text)

    # -- internals ------------------------------------------------------------------------
    async def _astart(self) -> None:
        self._closing = asyncio.Event()
        app = self._make_app()
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self.shutdown_timeout, handle_signals=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if not sockets:
            raise RuntimeError("could not determine the bound port")
        self._port = int(sockets[0].getsockname()[1])

    async def _astop(self) -> None:
        assert self._closing is not None
        self._closing.set()
        self._on_closing()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _on_closing(self) -> None:
        """Hook run in the loop when stopping starts (wake waiters)."""

    @staticmethod
    def _drain_loop(loop: asyncio.AbstractEventLoop) -> None:
        """Cancel and await leftover tasks so closing the loop logs no 'Task was destroyed'."""
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


# --------------------------------------------------------------------------------------
# Telegram's HTML entity parser (the parts a bot can get wrong)
# --------------------------------------------------------------------------------------


class HtmlParseError(ValueError):
    """Raised with the reason Telegram would put after "can't parse entities: "."""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


_TAG_ENTITY = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_AMP_RE = re.compile(r"&(?:lt|gt|amp|quot|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});")


class _TelegramHtml(html.parser.HTMLParser):
    """html.parser driven validator producing Telegram's visible text and entities."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=False)
        self._source = source
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self.text_parts: list[str] = []
        self.utf16_pos = 0
        self.stack: list[tuple[str, int, dict[str, str | None]]] = []
        self.entities: list[dict[str, Any]] = []

    def _byte_offset(self) -> int:
        line, col = self.getpos()
        char_pos = self._line_starts[line - 1] + col
        return len(self._source[:char_pos].encode("utf-8"))

    def _emit(self, text: str) -> None:
        self.text_parts.append(text)
        self.utf16_pos += utf16_len(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _TAG_ENTITY:
            raise HtmlParseError(
                f'Unsupported start tag "{tag}" at byte offset {self._byte_offset()}'
            )
        attributes = dict(attrs)
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            raise HtmlParseError('Tag "span" must have class "tg-spoiler"')
        if tag == "tg-emoji" and not attributes.get("emoji-id"):
            raise HtmlParseError("Custom emoji entity must contain a tg://emoji URL")
        self.stack.append((tag, self.utf16_pos, attributes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        raise HtmlParseError(f'Unsupported start tag "{tag}/" at byte offset {self._byte_offset()}')

    def handle_endtag(self, tag: str) -> None:
        if not self.stack:
            raise HtmlParseError(f"Unexpected end tag at byte offset {self._byte_offset()}")
        open_tag, start, attributes = self.stack[-1]
        if open_tag != tag:
            raise HtmlParseError(
                f"Unmatched end tag at byte offset {self._byte_offset()}, "
                f'expected "</{open_tag}>", found "</{tag}>"'
            )
        self.stack.pop()
        length = self.utf16_pos - start
        if length <= 0:
            return
        entity: dict[str, Any] = {"type": _TAG_ENTITY[tag], "offset": start, "length": length}
        if tag == "a":
            href = attributes.get("href")
            if not href:
                return  # Telegram drops a link without a usable URL instead of failing
            entity["url"] = href
        elif tag == "blockquote" and "expandable" in attributes:
            entity["type"] = "expandable_blockquote"
        elif tag == "pre":
            inner = next(
                (
                    e
                    for e in self.entities
                    if e["type"] == "code"
                    and e["offset"] == start
                    and e["length"] == length
                    and "language" in e
                ),
                None,
            )
            if inner is not None:
                self.entities.remove(inner)
                entity["language"] = inner["language"]
        elif tag == "code":
            css = attributes.get("class") or ""
            if css.startswith("language-") and self.stack and self.stack[-1][0] == "pre":
                entity["language"] = css.removeprefix("language-")
        elif tag == "tg-emoji":
            entity["custom_emoji_id"] = attributes.get("emoji-id")
        self.entities.append(entity)

    def handle_data(self, data: str) -> None:
        if "<" in data:
            offset = self._byte_offset() + len(data[: data.index("<")].encode("utf-8"))
            raise HtmlParseError(f'Unsupported start tag "" at byte offset {offset}')
        self._emit(data)

    def handle_entityref(self, name: str) -> None:
        if name not in _NAMED_ENTITIES:
            raise HtmlParseError(
                f'Unsupported HTML entity "&{name};" at byte offset {self._byte_offset()}'
            )
        self._emit(_NAMED_ENTITIES[name])

    def handle_charref(self, name: str) -> None:
        try:
            code = int(name[1:], 16) if name[:1] in "xX" else int(name)
        except ValueError:
            code = -1
        # Telegram decodes no NUL, no surrogate half and nothing past U+10FFFF (it would keep such
        # an "&" as text; the docs ask for "&amp;", and so do we).
        if not 0 < code < 0x110000 or 0xD800 <= code <= 0xDFFF:
            raise HtmlParseError(
                f"Invalid character reference at byte offset {self._byte_offset()}"
            )
        self._emit(chr(code))

    def _unsupported(self, *_: object) -> None:
        raise HtmlParseError(f'Unsupported start tag "!" at byte offset {self._byte_offset()}')

    handle_comment = handle_decl = handle_pi = unknown_decl = _unsupported


def parse_html(source: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse ``source`` as Telegram's parse_mode=HTML does: (visible text, entities).

    Stricter than a browser on purpose, like Telegram: only Telegram's tags (b strong i em
    u ins s strike del, span class="tg-spoiler" and tg-spoiler, a href, code, pre,
    blockquote [expandable], tg-emoji), proper nesting, every tag closed, no bare ``<``;
    unknown attributes are ignored, as Telegram does. ``&`` only as ``&lt; &gt; &amp;
    &quot;`` or a numeric reference to a character: what the Bot API documentation asks
    (Telegram itself keeps an unknown entity as text). Raises :class:`HtmlParseError`
    with Telegram-style reasons.
    """
    for match in re.finditer("&", source):
        if not _AMP_RE.match(source, match.start()):
            offset = len(source[: match.start()].encode("utf-8"))
            raise HtmlParseError(
                f'Character "&" is reserved and must be escaped as "&amp;" at byte offset {offset}'
            )
    empty_end = re.search(r"</\s*>", source)  # html.parser skips these silently; Telegram does not
    if empty_end:
        offset = len(source[: empty_end.start()].encode("utf-8"))
        raise HtmlParseError(f"Empty end tag at byte offset {offset}")
    parser = _TelegramHtml(source)
    parser.feed(source)
    parser.close()
    if parser.stack:
        raise HtmlParseError(
            f'Can\'t find end tag corresponding to start tag "{parser.stack[-1][0]}"'
        )
    parser.entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return "".join(parser.text_parts), parser.entities


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


class Call(NamedTuple):
    """One Bot API call as the fake received it (``at`` is ``time.monotonic()``)."""

    method: str
    params: dict[str, Any]
    at: float


@dataclass(frozen=True)
class UploadedFile:
    """A multipart file part (``params[field]`` holds one of these for uploads)."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes

    def __repr__(self) -> str:  # keep call logs short
        return f"UploadedFile({self.field!r}, {self.filename!r}, {len(self.data)} bytes)"


@dataclass
class SentDocument:
    """A document, photo or voice note the bot sent (``kind`` is "document", "photo" or "voice")."""

    chat_id: int | str
    message_id: int
    kind: str
    file_name: str | None
    mime_type: str | None
    data: bytes
    caption: str | None
    parse_mode: str | None
    file_id: str


@dataclass
class BotMessage:
    """The fake's view of one message the bot has in a chat.

    ``text`` is what the bot last sent (markup included), ``plain_text`` the text a
    user sees, ``texts`` every text it had (first send, then each edit).
    """

    chat_id: int | str
    message_id: int
    date: int
    kind: str  # "text" | "document" | "photo"
    text: str | None
    parse_mode: str | None
    plain_text: str | None
    entities: list[dict[str, Any]] = field(default_factory=list)
    reply_markup: Any = None
    reply_to_message_id: int | None = None
    edit_count: int = 0
    texts: list[str] = field(default_factory=list)
    caption: str | None = None
    document: SentDocument | None = None


@dataclass
class _FaultRule:
    method: str  # lower-case
    error_code: int
    description: str
    retry_after: int | None
    remaining: int | None  # None = until cleared
    chat_id: int | str | None


@dataclass
class _GarbleRule:
    method: str  # lower-case
    drop: tuple[str, ...]  # keys removed from the answer's ``result``
    body: str | None  # the whole answer instead, when set (e.g. not JSON)
    remaining: int
    chat_id: int | str | None


@dataclass
class _QueuedUpdate:
    update: dict[str, Any]
    forced: bool  # a redelivery: survives one confirmation so it is seen again


@dataclass
class _File:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int


class _ApiError(Exception):
    """A Bot API error answer (HTTP status = error_code)."""

    def __init__(
        self, code: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.parameters:
            payload["parameters"] = self.parameters
        return payload


def _bad(description: str) -> _ApiError:
    return _ApiError(400, f"Bad Request: {description}")


# Parameters whose form values are plain strings (everything else is JSON-decoded when
# possible, the way Telegram interprets form fields).
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "url",
        "secret_token",
        "file_id",
        "action",
        "language_code",
        "ip_address",
        "inline_message_id",
        "callback_query_id",
        "description",
        "short_description",
        "name",
        "title",
        "emoji",
        "query",
        "business_connection_id",
        "message_effect_id",
        "thumbnail",
        "document",
        "photo",
    }
)
_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
_COMMAND_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_TRIVIAL_TRUE = (
    "setMyDescription",
    "setMyShortDescription",
    "setMyName",
    "setChatMenuButton",
    "answerCallbackQuery",
    "setMessageReaction",
    "close",
    "logOut",
)


def _coerce(key: str, value: Any) -> Any:
    """Interpret one form value as Telegram does (numbers, booleans, JSON objects)."""
    if not isinstance(value, str) or key in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _scope_key(scope: Any, language_code: str | None) -> str:
    if scope is None or scope == "default":
        scope = {"type": "default"}
    elif isinstance(scope, str):
        scope = {"type": scope}
    scope = dict(scope)
    if isinstance(scope.get("chat_id"), str) and scope["chat_id"].lstrip("-").isdigit():
        scope["chat_id"] = int(scope["chat_id"])
    return json.dumps([scope, language_code or ""], sort_keys=True)


# --------------------------------------------------------------------------------------
# The fake Bot API
# --------------------------------------------------------------------------------------


class FakeTelegram(BackgroundServer):
    """A fake Telegram Bot API server (see the module docstring for why).

    The bot under test points ``TELEGRAM_API_BASE_URL`` at :attr:`base_url`; API calls
    arrive at ``{base_url}/bot{token}/{method}`` and downloads at
    ``{base_url}/file/bot{token}/{file_path}``. Tests inject updates with
    :meth:`push_update` and inspect what the bot did with :meth:`messages`,
    :meth:`calls` and friends. Failures are scripted with :meth:`fail`,
    :meth:`block_chat`, :meth:`reject_html` and :meth:`set_down`.
    """

    def __init__(
        self,
        token: str,
        *,
        username: str = "gateway_test_bot",
        first_name: str = "Gateway Test Bot",
        long_poll_cap: float = 1.0,
    ) -> None:
        super().__init__()
        if ":" not in token or not token.split(":", 1)[0].isdigit():
            raise ValueError("token must look like '<numeric id>:<secret>'")
        self.token = token
        self.username = username
        self.first_name = first_name
        self.long_poll_cap = long_poll_cap
        self._calls: list[Call] = []
        self._updates: list[_QueuedUpdate] = []
        self._delivered: list[tuple[int, float]] = []
        self._next_update_id = 100_000
        self._poll_generation = 0
        self._poll_waiters: set[asyncio.Future[None]] = set()
        self._webhook: dict[str, Any] = {"url": ""}
        self._commands: dict[str, list[dict[str, str]]] = {}
        self._chats: dict[int | str, dict[str, Any]] = {}
        self._next_message_id: dict[int | str, int] = {}
        self._bot_messages: dict[int | str, dict[int, BotMessage]] = {}
        self._user_messages: dict[int | str, dict[int, dict[str, Any]]] = {}
        self._documents: dict[int | str, list[SentDocument]] = {}
        self._chat_actions: dict[int | str, list[str]] = {}
        self._drafts: dict[int | str, list[dict[str, Any]]] = {}
        self._files: dict[str, _File] = {}
        self._files_by_path: dict[str, _File] = {}
        self._file_seq = itertools.count(1)
        self._faults: list[_FaultRule] = []
        self._blocked: set[int | str] = set()
        self._reject_html = 0
        self._garbles: list[_GarbleRule] = []
        self._down = False
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "getMe": lambda _p: self.bot_user,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "deleteMyCommands": self._delete_my_commands,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "sendChatAction": self._send_chat_action,
            "sendMessageDraft": self._send_message_draft,
            "sendDocument": lambda p: self._send_file(p, "document"),
            "sendPhoto": lambda p: self._send_file(p, "photo"),
            "sendVoice": lambda p: self._send_file(p, "voice"),
            "getFile": self._get_file,
            "deleteMessage": self._delete_message,
        }
        for name in _TRIVIAL_TRUE:
            self._methods[name] = lambda _p: True
        # Inline buttons: presses are pushed with callback_update(); each must be answered once.
        self._callback_queries: dict[str, dict[str, Any]] = {}
        self._callback_answers: list[dict[str, Any]] = []
        self._methods["answerCallbackQuery"] = self._answer_callback_query
        self._methods["editMessageReplyMarkup"] = self._edit_message_reply_markup
        self._method_names = {name.lower(): name for name in [*self._methods, "getUpdates"]}

    # ------------------------------------------------------------------ identity
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``TELEGRAM_API_BASE_URL``."""
        return self.root_url

    @property
    def bot_id(self) -> int:
        """The bot's user id: the token's numeric prefix, as in real tokens."""
        return int(self.token.split(":", 1)[0])

    @property
    def bot_user(self) -> dict[str, Any]:
        """The bot's ``User`` object (getMe result and ``from`` of its messages)."""
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # ------------------------------------------------------------------ fault injection
    def fail(
        self,
        method: str,
        error_code: int = 400,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        times: int | None = 1,
        chat_id: int | str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` (optionally only for ``chat_id``) fail.

        ``description`` defaults to Telegram's wording for the code (for 429:
        "Too Many Requests: retry after N"); ``retry_after`` adds
        ``parameters.retry_after``. ``times=None`` fails until :meth:`clear_faults`.
        """
        if description is None:
            if error_code == 429:
                description = f"Too Many Requests: retry after {retry_after or 1}"
            else:
                try:
                    description = HTTPStatus(error_code).phrase
                except ValueError:
                    description = "Error"
        with self._lock:
            self._faults.append(
                _FaultRule(method.lower(), error_code, description, retry_after, times, chat_id)
            )

    def garble(
        self,
        method: str,
        *,
        drop: tuple[str, ...] = ("date",),
        body: str | None = None,
        times: int = 1,
        chat_id: int | str | None = None,
    ) -> None:
        """The next ``times`` calls of ``method`` take effect (a message is sent, an edit made)
        but answer HTTP 200 with a body a client cannot read: ``result`` without the ``drop``
        keys, or ``body`` verbatim. A proxy or an emulator that answers off-spec does this."""
        with self._lock:
            self._garbles.append(_GarbleRule(method.lower(), drop, body, times, chat_id))

    def _garbled(self, method: str, params: dict[str, Any], result: Any) -> web.Response | None:
        with self._lock:
            for rule in self._garbles:
                if rule.method != method.lower() or rule.chat_id not in (None, params.get("chat_id")):
                    continue
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._garbles.remove(rule)
                if rule.body is not None:
                    return web.Response(text=rule.body, content_type="application/json")
                if isinstance(result, dict):
                    result = {key: value for key, value in result.items() if key not in rule.drop}
                return web.json_response({"ok": True, "result": result})
        return None

    def clear_faults(self) -> None:
        """Forget every pending :meth:`fail`, :meth:`garble`, :meth:`block_chat` and :meth:`reject_html`."""
        with self._lock:
            self._faults.clear()
            self._garbles.clear()
            self._blocked.clear()
            self._reject_html = 0

    def block_chat(self, chat_id: int | str, blocked: bool = True) -> None:
        """Every call addressed to ``chat_id`` answers 403 "bot was blocked by the user"."""
        with self._lock:
            if blocked:
                self._blocked.add(chat_id)
            else:
                self._blocked.discard(chat_id)

    def reject_html(self, times: int = 1) -> None:
        """The next ``times`` sends/edits with parse_mode=HTML fail "can't parse entities"."""
        with self._lock:
            self._reject_html += times

    def set_down(self, down: bool = True) -> None:
        """While down, every call answers 502 "Bad Gateway" (an outage of the Bot API)."""
        with self._lock:
            self._down = down

    # ------------------------------------------------------------------ queries
    def calls(self, method: str | None = None) -> list[Call]:
        """Every call received (optionally of one method), in arrival order."""
        with self._lock:
            if method is None:
                return list(self._calls)
            wanted = method.lower()
            return [c for c in self._calls if c.method.lower() == wanted]

    def unknown_methods(self) -> list[str]:
        """Methods the fake does not implement that were called (answered 404).

        Why: PTB maps 404 to ``InvalidToken``, which hides the real cause; check this
        first when a bot fails with "invalid token" against the fake.
        """
        with self._lock:
            known = set(self._method_names.values())
            return sorted({c.method for c in self._calls if c.method not in known})

    def messages(self, chat_id: int | str) -> list[BotMessage]:
        """The bot's current (not deleted) messages in a chat, ordered by message_id."""
        with self._lock:
            chat = self._bot_messages.get(chat_id, {})
            return [copy.deepcopy(chat[k]) for k in sorted(chat)]

    def sent_texts(self, chat_id: int | str) -> list[str]:
        """The current text (or caption) of each of the bot's messages in a chat."""
        return [m.text or m.caption or "" for m in self.messages(chat_id)]

    def documents(self, chat_id: int | str, kind: str | None = None) -> list[SentDocument]:
        """Documents and photos the bot sent to a chat (``kind`` filters)."""
        with self._lock:
            docs = self._documents.get(chat_id, [])
            return [copy.deepcopy(d) for d in docs if kind is None or d.kind == kind]

    def chat_actions(self, chat_id: int | str) -> list[str]:
        """Chat actions ("typing", ...) the bot sent to a chat, in order."""
        with self._lock:
            return list(self._chat_actions.get(chat_id, []))

    def drafts(self, chat_id: int | str) -> list[dict[str, Any]]:
        """sendMessageDraft previews sent to a chat: draft_id, text, parse_mode, plain_text."""
        with self._lock:
            return copy.deepcopy(self._drafts.get(chat_id, []))

    def commands(self, scope: Any = None, language_code: str | None = None) -> list[dict[str, str]]:
        """Commands set for a scope (None/"default", a type string or a scope dict)."""
        with self._lock:
            return copy.deepcopy(self._commands.get(_scope_key(scope, language_code), []))

    @property
    def webhook(self) -> dict[str, Any]:
        """The webhook as set: url ("" if none), secret_token, allowed_updates, ..."""
        with self._lock:
            info = copy.deepcopy(self._webhook)
            info["pending_update_count"] = len(self._updates)
            return info

    def pending_updates(self) -> list[int]:
        """update_ids not yet confirmed by the bot (getUpdates offset)."""
        with self._lock:
            return [q.update["update_id"] for q in self._updates]

    def delivered_update_ids(self) -> list[int]:
        """update_ids returned by getUpdates, in delivery order (repeats included)."""
        with self._lock:
            return [uid for uid, _ in self._delivered]

    # ------------------------------------------------------------------ injection
    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update for getUpdates; returns its update_id.

        A missing ``update_id`` gets a fresh one. Pushing an ``update_id`` that was
        already pushed queues it again as a redelivery, which the next getUpdates
        returns even if the bot already confirmed it (to test duplicate handling).
        """
        update = copy.deepcopy(update)
        with self._lock:
            uid = update.get("update_id")
            forced = False
            if uid is None:
                uid = self._next_update_id
                update["update_id"] = uid
            else:
                forced = uid < self._next_update_id
                self._updates = [q for q in self._updates if q.update["update_id"] != uid]
            self._next_update_id = max(self._next_update_id, uid + 1)
            for obj in self._message_like(update):
                self._register_incoming(obj)
            self._updates.append(_QueuedUpdate(update, forced))
            self._wake_pollers()
            return uid

    def deliver_webhook(
        self,
        update: dict[str, Any],
        port: int,
        *,
        path: str | None = None,
        secret: str | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, str]:
        """POST ``update`` to the bot's webhook server like Telegram does; (status, body).

        Goes to ``http://127.0.0.1:{port}`` plus the path of the URL the bot passed to
        setWebhook (or ``path``), with the recorded ``X-Telegram-Bot-Api-Secret-Token``
        (or ``secret``). A missing update_id is assigned as in :meth:`push_update`.
        """
        update = copy.deepcopy(update)
        with self._lock:
            url = str(self._webhook.get("url") or "")
            if path is None:
                if not url:
                    raise AssertionError("the bot has not set a webhook (pass path= to force)")
                path = urllib.parse.urlsplit(url).path or "/"
            if secret is None:
                secret = self._webhook.get("secret_token")
            if update.get("update_id") is None:
                update["update_id"] = self._next_update_id
            self._next_update_id = max(self._next_update_id, update["update_id"] + 1)
            for obj in self._message_like(update):
                self._register_incoming(obj)
            self._delivered.append((update["update_id"], time.monotonic()))
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        return post_json(f"http://127.0.0.1:{port}{path}", update, headers, timeout=timeout)

    def register_file(
        self, data: bytes, *, file_name: str | None = None, file_size: int | None = None
    ) -> str:
        """Make ``data`` downloadable via getFile; returns its file_id.

        ``file_size`` overrides the announced size (e.g. to fake a file too big to fetch).
        """
        with self._lock:
            return self._store_file(data, file_name, file_size).file_id

    def text_update(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        *,
        chat_type: str = "private",
        username: str | None = None,
        first_name: str = "Test",
        reply_to_message_id: int | None = None,
        entities: list[dict[str, Any]] | None = None,
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Build (not push) a text message update as Telegram would send it.

        Adds a ``bot_command`` entity for a leading "/command" and ``mention``
        entities for "@<bot username>", like Telegram's clients do.
        """
        message = self._incoming_message(
            chat_id,
            user_id,
            chat_type=chat_type,
            username=username,
            first_name=first_name,
            reply_to_message_id=reply_to_message_id,
        )
        message["text"] = text
        found = entities if entities is not None else self._auto_entities(text)
        if found:
            message["entities"] = found
        return self._incoming_update(message, update_id)

    def document_update(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        file_name: str,
        mime_type: str,
        *,
        caption: str | None = None,
        file_size: int | None = None,
        chat_type: str = "private",
        username: str | None = None,
        first_name: str = "Test",
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Build (not push) a document message update; the file becomes downloadable.

        ``file_size`` overrides the announced size (getFile then refuses > 20 MB).
        """
        message = self._incoming_message(
            chat_id, user_id, chat_type=chat_type, username=username, first_name=first_name
        )
        with self._lock:
            stored = self._store_file(data, file_name, file_size)
        message["document"] = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": stored.file_size,
        }
        if caption is not None:
            message["caption"] = caption
            found = self._auto_entities(caption)
            if found:
                message["caption_entities"] = found
        return self._incoming_update(message, update_id)

    def photo_update(
        self,
        chat_id: int,
        user_id: int,
        sizes: list[tuple[bytes, int, int]],
        *,
        caption: str | None = None,
        chat_type: str = "private",
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Build (not push) a photo message update: ``sizes`` are (data, width, height), as
        Telegram offers several sizes of one photo; each becomes downloadable via getFile."""
        message = self._incoming_message(
            chat_id, user_id, chat_type=chat_type, username=None, first_name="Test"
        )
        photo = []
        with self._lock:
            for data, width, height in sizes:
                stored = self._store_file(data, None, None)
                photo.append({"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                              "width": width, "height": height, "file_size": stored.file_size})
        message["photo"] = photo
        if caption is not None:
            message["caption"] = caption
        return self._incoming_update(message, update_id)

    def callback_update(
        self,
        chat_id: int,
        message_id: int,
        user_id: int,
        data: str,
        *,
        first_name: str = "Test",
        username: str | None = None,
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Build (not push) the update Telegram sends when ``user_id`` presses an inline button
        with ``data`` under the bot's message ``message_id`` in ``chat_id`` (the message as it is now)."""
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        with self._lock:
            msg = self._bot_messages.get(chat_id, {}).get(message_id)
            if msg is None:
                raise AssertionError(f"no bot message {message_id} in chat {chat_id} to press a button on")
            query_id = f"cbq{len(self._callback_queries) + 1:06d}"
            query = {"id": query_id, "from": user, "message": self._message_json(msg),
                     "chat_instance": f"ci{chat_id}", "data": data}
            self._callback_queries[query_id] = {"answered": False, "at": time.monotonic()}
        update: dict[str, Any] = {"callback_query": query}
        if update_id is not None:
            update["update_id"] = update_id
        return update

    def callback_answers(self) -> list[dict[str, Any]]:
        """answerCallbackQuery calls: callback_query_id, text, show_alert, in order."""
        with self._lock:
            return copy.deepcopy(self._callback_answers)

    def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id") or "")
        query = self._callback_queries.get(query_id)
        if query is None or query["answered"]:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        query["answered"] = True
        self._callback_answers.append({"callback_query_id": query_id, "text": params.get("text"),
                                       "show_alert": bool(params.get("show_alert"))})
        return True

    def _edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._require_chat(params)
        msg = self._bot_messages.get(chat_id, {}).get(params.get("message_id"))
        if msg is None:
            raise _bad("message to edit not found")
        markup = params.get("reply_markup")
        if markup == msg.reply_markup or (not markup and not msg.reply_markup):
            raise _bad(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        msg.reply_markup = markup
        msg.edit_count += 1
        result = self._message_json(msg)
        result["edit_date"] = int(time.time())
        return result

    def media_update(
        self,
        chat_id: int,
        user_id: int,
        field: str,
        payload: dict[str, Any],
        *,
        data: bytes | None = None,
        file_size: int | None = None,
        caption: str | None = None,
        chat_type: str = "private",
        update_id: int | None = None,
    ) -> dict[str, Any]:
        """Build (not push) a message carrying ``field`` (voice, audio, video_note, video,
        animation, sticker, location, contact, dice, poll...) with ``payload``. With ``data`` the
        file becomes downloadable and ``file_id``/``file_unique_id``/``file_size`` are filled in."""
        message = self._incoming_message(chat_id, user_id, chat_type=chat_type, username=None, first_name="Test")
        body = dict(payload)
        if data is not None:
            with self._lock:
                stored = self._store_file(data, body.get("file_name"), file_size)
            body.update(file_id=stored.file_id, file_unique_id=stored.file_unique_id, file_size=stored.file_size)
        message[field] = body
        if caption is not None:
            message["caption"] = caption
        return self._incoming_update(message, update_id)

    def voice_update(
        self, chat_id: int, user_id: int, data: bytes, *, duration: int = 3, kind: str = "voice",
        file_size: int | None = None, update_id: int | None = None,
    ) -> dict[str, Any]:
        """A voice note (``kind`` "audio" or "video_note" for those) of ``duration`` seconds."""
        payload: dict[str, Any] = {"duration": duration}
        if kind == "voice":
            payload["mime_type"] = "audio/ogg"
        elif kind == "audio":
            payload.update(mime_type="audio/mpeg", file_name="song.mp3")
        elif kind == "video_note":
            payload["length"] = 240
        return self.media_update(chat_id, user_id, kind, payload, data=data, file_size=file_size,
                                 update_id=update_id)

    def _incoming_update(self, message: dict[str, Any], update_id: int | None) -> dict[str, Any]:
        """The update carrying a message a user sent; the message exists once "sent", however
        the update is then delivered."""
        with self._lock:
            self._register_incoming(message)
        update: dict[str, Any] = {"message": message}
        if update_id is not None:
            update["update_id"] = update_id
        return update

    # ------------------------------------------------------------------ waiting
    def wait_for(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        *,
        interval: float = 0.02,
        message: str | None = None,
    ) -> T:
        """Poll ``predicate`` until it returns something truthy; return that value.

        ``LookupError`` (IndexError/KeyError) inside the predicate counts as "not
        yet", so ``lambda: fake.messages(1)[0]`` works. On timeout raises
        AssertionError with the last value and the most recent calls, so a failing
        e2e test shows what the bot actually did.
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = predicate()
            except LookupError as exc:
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        recent = "\n".join(f"  {c.method} {self._short(c.params)}" for c in self.calls()[-25:])
        unknown = self.unknown_methods()
        if unknown:
            recent += f"\n  (methods FakeTelegram does not implement, answered 404: {unknown})"
        raise AssertionError(
            f"{message or 'condition not met'} within {timeout:.1f}s; last value: {last!r}\n"
            f"recent Bot API calls:\n{recent or '  (none)'}"
        )

    def wait_for_text(
        self, chat_id: int | str, substring: str, timeout: float = 10.0
    ) -> BotMessage:
        """Wait until a bot message in ``chat_id`` currently contains ``substring``.

        Matches the raw text (markup included) or the visible text, so tests can
        search for what a user would read.
        """

        def find() -> BotMessage | None:
            for msg in self.messages(chat_id):
                for candidate in (msg.text, msg.plain_text, msg.caption):
                    if candidate and substring in candidate:
                        return msg
            return None

        return self.wait_for(
            find,
            timeout,
            message=f"no bot message in chat {chat_id} containing {substring!r} "
            f"(current texts: {self.sent_texts(chat_id)!r})",
        )

    # ================================================================== server side
    def _make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._error_middleware], client_max_size=64 * 1024 * 1024
        )
        app.router.add_route("*", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._handle_file)
        app.router.add_route("*", "/{tail:.*}", self._handle_unknown)
        return app

    @web.middleware
    async def _error_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return web.json_response(
                {"ok": False, "error_code": exc.status, "description": exc.reason},
                status=exc.status,
            )
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            # The client went away mid-request (a bot killed or stopped during a long poll):
            # what real Telegram sees too, not a bug in the fake.
            return web.json_response({"ok": False, "error_code": 499, "description": "client gone"}, status=499)
        except Exception as exc:
            self._record_server_error(f"{request.method} {request.path}", exc)
            return web.json_response(
                {"ok": False, "error_code": 500, "description": f"Internal Server Error: {exc!r}"},
                status=500,
            )

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": False, "error_code": 404, "description": "Not Found"}, status=404
        )

    async def _handle_method(self, request: web.Request) -> web.Response:
        raw_method = request.match_info["method"]
        try:
            params = await self._read_params(request)
        except _ApiError as err:
            with self._lock:
                self._calls.append(Call(raw_method, {}, time.monotonic()))
            return web.json_response(err.body(), status=err.code)
        try:
            method = self._admit(request.match_info["token"], raw_method, params)
            if method == "getUpdates":
                result = await self._get_updates(params)
            else:
                with self._lock:
                    result = self._methods[method](params)
        except _ApiError as err:
            return web.json_response(err.body(), status=err.code)
        garbled = self._garbled(method, params, result)
        if garbled is not None:
            return garbled
        return web.json_response({"ok": True, "result": result})

    async def _handle_file(self, request: web.Request) -> web.Response:
        with self._lock:
            down = self._down
            stored = self._files_by_path.get(request.match_info["path"])
        if down:
            return web.json_response(_ApiError(502, "Bad Gateway").body(), status=502)
        if request.match_info["token"] != self.token:
            return web.json_response(_ApiError(401, "Unauthorized").body(), status=401)
        if stored is None:
            return web.json_response(_ApiError(404, "Not Found").body(), status=404)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def _read_params(self, request: web.Request) -> dict[str, Any]:
        """Merge query string and body (JSON, urlencoded or multipart) into one dict."""
        params: dict[str, Any] = dict(request.query)
        ctype = request.content_type
        if request.can_read_body:
            if ctype == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    raise _bad("can't parse JSON object") from None
                if not isinstance(body, dict):
                    raise _bad("JSON object expected")
                params.update(body)
            elif ctype == "multipart/form-data":
                reader = await request.multipart()
                async for part in reader:
                    if part is None or not hasattr(part, "read") or part.name is None:
                        continue
                    data = await part.read(decode=False)
                    if part.filename is not None:
                        params[part.name] = UploadedFile(
                            part.name, part.filename, part.headers.get("Content-Type"), bytes(data)
                        )
                    else:
                        params[part.name] = bytes(data).decode("utf-8", "replace")
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        params[key] = UploadedFile(
                            key, value.filename, value.content_type, value.file.read()
                        )
                    else:
                        params[key] = value
        return {key: _coerce(key, value) for key, value in params.items()}

    def _admit(self, token: str, raw_method: str, params: dict[str, Any]) -> str:
        """Record the call and apply the gatekeeping Telegram (or an outage) would."""
        with self._lock:
            method = self._method_names.get(raw_method.lower(), raw_method)
            self._calls.append(Call(method, params, time.monotonic()))
            if self._down:
                raise _ApiError(502, "Bad Gateway")
            if token != self.token:
                raise _ApiError(401, "Unauthorized")
            if raw_method.lower() not in self._method_names:
                _LOG.warning("FakeTelegram: unknown method %r answered 404", raw_method)
                raise _ApiError(404, "Not Found")
            chat_id = params.get("chat_id")
            for rule in self._faults:
                if rule.method != method.lower():
                    continue
                if rule.chat_id is not None and rule.chat_id != chat_id:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._faults.remove(rule)
                parameters = (
                    {"retry_after": rule.retry_after} if rule.retry_after is not None else None
                )
                raise _ApiError(rule.error_code, rule.description, parameters)
            if chat_id is not None and chat_id in self._blocked:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
            return method

    # ------------------------------------------------------------------ getUpdates
    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._webhook.get("url"):
                raise _ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            offset = self._int_param(params, "offset", 0)
            limit = max(1, min(100, self._int_param(params, "limit", 100)))
            timeout = max(0.0, float(self._int_param(params, "timeout", 0)))
            allowed = params.get("allowed_updates")
            self._confirm(offset)
            # A newer getUpdates terminates an older pending one, as on Telegram.
            self._poll_generation += 1
            generation = self._poll_generation
            self._wake_pollers()
        deadline = loop.time() + min(timeout, self.long_poll_cap)
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:
                if generation != self._poll_generation:
                    raise _ApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; "
                        "make sure that only one bot instance is running",
                    )
                batch = self._take_batch(limit, allowed)
                if batch or self._is_closing() or loop.time() >= deadline:
                    return batch
                self._poll_waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._poll_waiters.discard(waiter)

    @staticmethod
    def _int_param(params: dict[str, Any], key: str, default: int) -> int:
        value = params.get(key, default)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _bad(f"wrong parameter {key} in request") from None

    def _confirm(self, offset: int) -> None:
        """Apply getUpdates' offset: confirm (forget) updates before it."""
        if offset < 0:
            keep = self._updates[offset:]
            self._updates = keep
        elif offset > 0:
            kept = []
            for queued in self._updates:
                if queued.update["update_id"] >= offset:
                    kept.append(queued)
                elif queued.forced:
                    kept.append(queued)  # a redelivery survives until delivered once
            self._updates = kept

    def _take_batch(self, limit: int, allowed: Any) -> list[dict[str, Any]]:
        if allowed:
            wanted = set(allowed)
            self._updates = [
                q for q in self._updates if any(k in wanted for k in q.update if k != "update_id")
            ]
        batch = self._updates[:limit]
        now = time.monotonic()
        for queued in batch:
            queued.forced = False
            self._delivered.append((queued.update["update_id"], now))
        return [copy.deepcopy(q.update) for q in batch]

    def _wake_pollers(self) -> None:
        """Resolve every pending long-poll waiter (safe from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for waiter in list(self._poll_waiters):
            loop.call_soon_threadsafe(_resolve, waiter)

    def _on_closing(self) -> None:
        with self._lock:
            self._wake_pollers()

    # ------------------------------------------------------------------ webhook
    def _set_webhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        secret = params.get("secret_token")
        if url:
            if not url.startswith("https://"):
                raise _bad("bad webhook: An HTTPS URL must be provided for webhook")
            port_match = re.match(r"https://[^/:]+:(\d+)", url)
            if port_match and port_match.group(1) not in {"443", "80", "88", "8443"}:
                raise _bad("bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443")
        if secret is not None and not _SECRET_RE.match(str(secret)):
            raise _bad("secret token contains unallowed characters")
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": params.get("allowed_updates"),
            "max_connections": params.get("max_connections", 40),
            "ip_address": params.get("ip_address"),
        }
        if url:
            self._poll_generation += 1
            self._wake_pollers()
        return True

    def _delete_webhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        self._webhook = {"url": ""}
        return True

    def _get_webhook_info(self, _params: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self._webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }
        if info["url"]:
            info["max_connections"] = self._webhook.get("max_connections", 40)
            if self._webhook.get("allowed_updates"):
                info["allowed_updates"] = self._webhook["allowed_updates"]
            if self._webhook.get("ip_address"):
                info["ip_address"] = self._webhook["ip_address"]
        return info

    # ------------------------------------------------------------------ commands
    def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise _bad("can't parse commands JSON object")
        if len(commands) > 100:
            raise _bad("too many commands")
        clean = []
        for cmd in commands:
            if not isinstance(cmd, dict):
                raise _bad("can't parse BotCommand")
            name, desc = cmd.get("command"), cmd.get("description")
            if not isinstance(name, str) or not _COMMAND_RE.match(name):
                raise _bad("BOT_COMMAND_INVALID")
            if not isinstance(desc, str) or not 1 <= len(desc) <= 256:
                raise _bad("BOT_COMMAND_DESCRIPTION_INVALID")
            clean.append({"command": name, "description": desc})
        self._commands[_scope_key(params.get("scope"), params.get("language_code"))] = clean
        return True

    def _get_my_commands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        key = _scope_key(params.get("scope"), params.get("language_code"))
        return copy.deepcopy(self._commands.get(key, []))

    def _delete_my_commands(self, params: dict[str, Any]) -> bool:
        self._commands.pop(_scope_key(params.get("scope"), params.get("language_code")), None)
        return True

    # ------------------------------------------------------------------ messages
    def _require_chat(self, params: dict[str, Any]) -> int | str:
        chat_id = params.get("chat_id")
        if chat_id is None or chat_id == "":
            raise _bad("chat_id is empty")
        return chat_id

    def _parse_text(
        self, text: Any, parse_mode: Any, entities: Any, *, caption: bool = False
    ) -> tuple[str, list[dict[str, Any]]]:
        """Validate like Telegram and return the visible text and its entities."""
        what = "message caption" if caption else "message text"
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        mode = str(parse_mode).lower() if parse_mode else ""
        if mode == "html":
            if self._reject_html > 0:
                self._reject_html -= 1
                raise _bad('can\'t parse entities: Unsupported start tag "fake" at byte offset 0')
            try:
                plain, found = parse_html(text)
            except HtmlParseError as exc:
                raise _bad(f"can't parse entities: {exc}") from None
        elif mode in ("markdown", "markdownv2", ""):
            plain, found = text, (list(entities) if isinstance(entities, list) else [])
        else:
            raise _bad("unsupported parse_mode")
        if not caption and not plain.strip():
            raise _bad(f"{what} is empty")
        return plain, found

    def _new_bot_message(self, chat_id: int | str, kind: str, params: dict[str, Any]) -> BotMessage:
        reply_to = self._reply_target(chat_id, params)
        msg = BotMessage(
            chat_id=chat_id,
            message_id=self._allocate_message_id(chat_id),
            date=int(time.time()),
            kind=kind,
            text=None,
            parse_mode=params.get("parse_mode"),
            plain_text=None,
            reply_markup=params.get("reply_markup"),
            reply_to_message_id=reply_to,
        )
        self._bot_messages.setdefault(chat_id, {})[msg.message_id] = msg
        return msg

    def _reply_target(self, chat_id: int | str, params: dict[str, Any]) -> int | None:
        reply = params.get("reply_parameters")
        target, allow_missing = None, bool(params.get("allow_sending_without_reply"))
        if isinstance(reply, dict):
            target = reply.get("message_id")
            allow_missing = allow_missing or bool(reply.get("allow_sending_without_reply"))
        elif params.get("reply_to_message_id") is not None:
            target = params["reply_to_message_id"]
        if target is None:
            return None
        known = target in self._bot_messages.get(chat_id, {}) or target in self._user_messages.get(
            chat_id, {}
        )
        if not known:
            if allow_missing:
                return None  # Telegram then sends it as a plain, non-reply message
            raise _bad("message to be replied not found")
        return int(target)

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._require_chat(params)
        text = params.get("text")
        plain, entities = self._parse_text(text, params.get("parse_mode"), params.get("entities"))
        if utf16_len(plain) > MAX_MESSAGE_UTF16:
            raise _bad("message is too long")
        msg = self._new_bot_message(chat_id, "text", params)
        msg.text, msg.plain_text, msg.entities = str(text), plain, entities
        msg.texts.append(str(text))
        return self._message_json(msg)

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise _bad("inline messages are not supported by FakeTelegram")
        chat_id = self._require_chat(params)
        message_id = params.get("message_id")
        msg = self._bot_messages.get(chat_id, {}).get(message_id)
        if msg is None:
            raise _bad("message to edit not found")
        if msg.kind != "text":
            raise _bad("there is no text in the message to edit")
        text = params.get("text")
        plain, entities = self._parse_text(text, params.get("parse_mode"), params.get("entities"))
        if utf16_len(plain) > MAX_MESSAGE_UTF16:
            raise _bad("MESSAGE_TOO_LONG")  # sendMessage says "message is too long"; edits don't
        markup = params.get("reply_markup")
        if plain == msg.plain_text and entities == msg.entities and markup == msg.reply_markup:
            raise _bad(
                "message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message"
            )
        msg.text, msg.plain_text, msg.entities = str(text), plain, entities
        msg.parse_mode, msg.reply_markup = params.get("parse_mode"), markup
        msg.edit_count += 1
        msg.texts.append(str(text))
        result = self._message_json(msg)
        result["edit_date"] = int(time.time())
        return result

    def _send_chat_action(self, params: dict[str, Any]) -> bool:
        chat_id = self._require_chat(params)
        action = params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        self._chat_actions.setdefault(chat_id, []).append(str(action))
        return True

    def _send_message_draft(self, params: dict[str, Any]) -> bool:
        """Bot API 9.3+ streamed preview (private chats only; ephemeral, not a message)."""
        chat_id = self._require_chat(params)
        if not isinstance(chat_id, int) or chat_id <= 0:
            raise _bad("sendMessageDraft is available only in private chats")
        draft_id = params.get("draft_id")
        if not isinstance(draft_id, int) or draft_id == 0:
            raise _bad("draft_id must be a non-zero integer")
        text = params.get("text") or ""
        plain, _ = self._parse_text(
            text, params.get("parse_mode"), params.get("entities"), caption=True
        )  # empty text is allowed: "Thinking..."
        if utf16_len(plain) > MAX_MESSAGE_UTF16:
            raise _bad("message is too long")
        self._drafts.setdefault(chat_id, []).append(
            {
                "draft_id": draft_id,
                "text": text,
                "parse_mode": params.get("parse_mode"),
                "plain_text": plain,
            }
        )
        return True

    def _send_file(self, params: dict[str, Any], kind: str) -> dict[str, Any]:
        chat_id = self._require_chat(params)
        payload = params.get(kind)
        if payload is None or payload == "":
            raise _bad(f"there is no {kind} in the request")
        if isinstance(payload, UploadedFile):
            if not payload.data:
                raise _bad("file must be non-empty")
            stored = self._store_file(payload.data, payload.filename, None)
            file_name, mime, data = payload.filename, payload.content_type, payload.data
        else:  # a file_id (or URL) sent again
            known = self._files.get(str(payload))
            if known is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            stored, file_name, mime, data = known, None, None, known.data
        caption = params.get("caption")
        entities: list[dict[str, Any]] = []
        plain: str | None = None
        if caption is not None:
            plain, entities = self._parse_text(
                caption, params.get("parse_mode"), params.get("caption_entities"), caption=True
            )
            if utf16_len(plain) > MAX_CAPTION_UTF16:
                raise _bad("message caption is too long")
        msg = self._new_bot_message(chat_id, kind, params)
        msg.caption, msg.plain_text, msg.entities = caption, plain, entities
        msg.document = SentDocument(
            chat_id,
            msg.message_id,
            kind,
            file_name,
            mime,
            data,
            caption,
            params.get("parse_mode"),
            stored.file_id,
        )
        self._documents.setdefault(chat_id, []).append(msg.document)
        return self._message_json(msg)

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self._files.get(str(params.get("file_id") or ""))
        if stored is None:
            raise _bad("invalid file_id")
        if stored.file_size > MAX_DOWNLOAD_BYTES:
            raise _bad("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.file_size,
            "file_path": stored.file_path,
        }

    def _delete_message(self, params: dict[str, Any]) -> bool:
        chat_id, message_id = self._require_chat(params), params.get("message_id")
        removed = self._bot_messages.get(chat_id, {}).pop(message_id, None)
        if removed is None and self._user_messages.get(chat_id, {}).pop(message_id, None) is None:
            raise _bad("message to delete not found")
        return True

    # ------------------------------------------------------------------ helpers (locked)
    def _chat_json(self, chat_id: int | str) -> dict[str, Any]:
        known = self._chats.get(chat_id)
        if known is not None:
            return dict(known)
        if isinstance(chat_id, int) and chat_id > 0:
            return {"id": chat_id, "type": "private", "first_name": "Test"}
        if isinstance(chat_id, int):
            kind = "supergroup" if str(chat_id).startswith("-100") else "group"
            return {"id": chat_id, "type": kind, "title": f"Test {kind} {chat_id}"}
        return {"id": -1001, "type": "channel", "title": str(chat_id)}

    def _message_json(self, msg: BotMessage) -> dict[str, Any]:
        out: dict[str, Any] = {
            "message_id": msg.message_id,
            "date": msg.date,
            "chat": self._chat_json(msg.chat_id),
            "from": self.bot_user,
        }
        if msg.kind == "text":
            out["text"] = msg.plain_text
            if msg.entities:
                out["entities"] = copy.deepcopy(msg.entities)
        else:
            doc = msg.document
            assert doc is not None
            stored = self._files[doc.file_id]
            if msg.kind == "photo":
                out["photo"] = [
                    {
                        "file_id": stored.file_id,
                        "file_unique_id": stored.file_unique_id,
                        "width": 320,
                        "height": 240,
                        "file_size": stored.file_size,
                    }
                ]
            elif msg.kind == "voice":  # a voice note the bot sent (sendVoice)
                out["voice"] = {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id,
                                "duration": 1, "mime_type": doc.mime_type or "audio/ogg",
                                "file_size": stored.file_size}
            else:
                out["document"] = {
                    "file_id": stored.file_id,
                    "file_unique_id": stored.file_unique_id,
                    "file_size": stored.file_size,
                }
                if doc.file_name:
                    out["document"]["file_name"] = doc.file_name
                if doc.mime_type:
                    out["document"]["mime_type"] = doc.mime_type
            if msg.plain_text is not None:
                out["caption"] = msg.plain_text
                if msg.entities:
                    out["caption_entities"] = copy.deepcopy(msg.entities)
        if msg.reply_markup:
            out["reply_markup"] = copy.deepcopy(msg.reply_markup)
        return out

    def _allocate_message_id(self, chat_id: int | str) -> int:
        next_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = next_id + 1
        return next_id

    def _store_file(self, data: bytes, file_name: str | None, file_size: int | None) -> _File:
        seq = next(self._file_seq)
        suffix = ""
        if file_name and "." in file_name:
            suffix = "." + re.sub(r"[^A-Za-z0-9]", "", file_name.rsplit(".", 1)[1])[:8]
        stored = _File(
            file_id=f"FAKEFILE{seq:06d}AgADBAAD",
            file_unique_id=f"AgAD{seq:06d}",
            file_path=f"documents/file_{seq}{suffix}",
            data=bytes(data),
            file_size=len(data) if file_size is None else file_size,
        )
        self._files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        return stored

    def _incoming_message(
        self,
        chat_id: int,
        user_id: int,
        *,
        chat_type: str,
        username: str | None,
        first_name: str,
        reply_to_message_id: int | None = None,
    ) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name,
            "language_code": "en",
        }
        if username:
            user["username"] = username
        if chat_type == "private":
            chat: dict[str, Any] = {"id": chat_id, "type": "private", "first_name": first_name}
            if username:
                chat["username"] = username
        elif chat_type in ("group", "supergroup", "channel"):
            if chat_id >= 0:
                raise ValueError(f"{chat_type} chat ids are negative on Telegram, got {chat_id}")
            chat = {"id": chat_id, "type": chat_type, "title": f"Test {chat_type} {chat_id}"}
        else:
            raise ValueError(f"unknown chat_type {chat_type!r}")
        with self._lock:
            self._chats[chat_id] = dict(chat)
            message: dict[str, Any] = {
                "message_id": self._allocate_message_id(chat_id),
                "date": int(time.time()),
                "chat": chat,
                "from": user,
            }
            if reply_to_message_id is not None:
                message["reply_to_message"] = self._replied_json(chat_id, reply_to_message_id)
        return message

    def _replied_json(self, chat_id: int, message_id: int) -> dict[str, Any]:
        bot_msg = self._bot_messages.get(chat_id, {}).get(message_id)
        if bot_msg is not None:
            return self._message_json(bot_msg)
        user_msg = self._user_messages.get(chat_id, {}).get(message_id)
        if user_msg is not None:
            replied = copy.deepcopy(user_msg)
            replied.pop("reply_to_message", None)
            return replied
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self._chat_json(chat_id),
        }

    def _auto_entities(self, text: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        command = re.match(r"/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?", text)
        if command:
            found.append({"type": "bot_command", "offset": 0, "length": utf16_len(command.group())})
        mention = f"@{self.username}"
        for match in re.finditer(re.escape(mention) + r"\b", text, flags=re.IGNORECASE):
            if command and match.start() < command.end():
                continue
            found.append(
                {
                    "type": "mention",
                    "offset": utf16_len(text[: match.start()]),
                    "length": utf16_len(match.group()),
                }
            )
        return found

    @staticmethod
    def _message_like(update: dict[str, Any]) -> Iterable[dict[str, Any]]:
        for key in (
            "message",
            "edited_message",
            "channel_post",
            "edited_channel_post",
            "business_message",
        ):
            obj = update.get(key)
            if isinstance(obj, dict):
                yield obj
        callback = update.get("callback_query")
        if isinstance(callback, dict) and isinstance(callback.get("message"), dict):
            yield callback["message"]

    def _register_incoming(self, message: dict[str, Any]) -> None:
        chat = message.get("chat")
        message_id = message.get("message_id")
        if not isinstance(chat, dict) or "id" not in chat or not isinstance(message_id, int):
            return
        chat_id = chat["id"]
        self._chats.setdefault(chat_id, dict(chat))
        if message.get("from", {}).get("id") != self.bot_id:
            self._user_messages.setdefault(chat_id, {})[message_id] = copy.deepcopy(message)
        self._next_message_id[chat_id] = max(self._next_message_id.get(chat_id, 1), message_id + 1)

    @staticmethod
    def _short(params: dict[str, Any]) -> str:
        text = repr({k: v for k, v in params.items() if k not in ("reply_markup",)})
        return text if len(text) <= 160 else text[:157] + "..."


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def post_json(
    url: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """POST JSON with the standard library and return (status, response text).

    Why urllib: tests that play Telegram's webhook delivery must not depend on the
    bot's own HTTP stack; non-2xx answers are returned, not raised.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=all_headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")
