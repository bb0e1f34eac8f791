"""Tests of the stand-ins themselves, driven by the real client libraries.

Why: e2e tests are only as trustworthy as the fakes. Each test here checks that a
behaviour the bot relies on looks, to python-telegram-bot 22 and the openai
client, exactly like the real service (error classes, retry_after, streaming).
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import json
import threading
import time
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import telegram
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter

from tests.fakes.llm_api import Error, FakeLLM, Hang, Malformed, Reply, ToolCalls
from tests.fakes.telegram_api import FakeTelegram, HtmlParseError, parse_html, post_json

TOKEN = "123456789:AAE-test-SECRET-token_abcdefghijklmnop"
MODEL = "gpt-4o-mini"


@pytest.fixture
def tg() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(TOKEN, long_poll_cap=0.5).start()
    yield fake
    fake.stop()
    assert fake.server_errors() == []


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM(MODEL, api_key="sk-test").start()
    yield fake
    fake.stop()
    assert fake.server_errors() == []


def make_bot(fake: FakeTelegram, token: str = TOKEN) -> telegram.Bot:
    # PTB appends the token to base_url / base_file_url, then "/" + method or file path.
    return telegram.Bot(
        token, base_url=f"{fake.base_url}/bot", base_file_url=f"{fake.base_url}/file/bot"
    )


def make_client(fake: FakeLLM, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, **kwargs)


def retry_seconds(exc: RetryAfter) -> float:
    """PTB >= 22.2 deprecates the int form of retry_after; accept both forms."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


# ---------------------------------------------------------------- Telegram: HTML rules


@pytest.mark.parametrize(
    ("source", "visible"),
    [
        ("<b>bold</b> &amp; <i>it</i>", "bold & it"),
        ('<a href="https://x.org/?a=1&amp;b=2">l</a>', "l"),
        ('<span class="tg-spoiler">s</span><tg-spoiler>t</tg-spoiler>', "st"),
        ('<pre><code class="language-python">x = 1</code></pre>', "x = 1"),
        ("<blockquote expandable>q</blockquote>", "q"),
        ("&lt;tag&gt; &#38; &#x26; &quot;", '<tag> & & "'),
        ("a > b", "a > b"),
    ],
)
def test_html_accepted(source: str, visible: str) -> None:
    assert parse_html(source)[0] == visible


@pytest.mark.parametrize(
    "source",
    [
        "a & b",
        "&nbsp;",
        "1 < 2",
        "<b>open",
        "<b><i>x</b></i>",
        "x</b>",
        "<br>",
        "<p>x</p>",
        "<span>x</span>",
        "<!-- c -->",
        "<b/>",
        "<tg-emoji>x</tg-emoji>",
    ],
)
def test_html_rejected(source: str) -> None:
    with pytest.raises(HtmlParseError):
        parse_html(source)


def test_html_entities_use_utf16_offsets() -> None:
    _, entities = parse_html("😀 <b>x</b>")
    assert entities == [{"type": "bold", "offset": 3, "length": 1}]


# ---------------------------------------------------------------- Telegram via PTB


@pytest.mark.asyncio
async def test_get_me_and_send_message_html(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        assert bot.bot.id == 123456789
        assert bot.bot.username == "gateway_test_bot"
        sent = await bot.send_message(42, "<b>hi</b> &amp; bye", parse_mode="HTML")
    assert sent.message_id == 1 and sent.text == "hi & bye"
    assert sent.entities[0].type == "bold"
    assert sent.from_user is not None and sent.from_user.is_bot
    [msg] = tg.messages(42)
    assert (msg.text, msg.plain_text, msg.parse_mode) == ("<b>hi</b> &amp; bye", "hi & bye", "HTML")
    call = tg.calls("sendMessage")[0]
    assert call.params["chat_id"] == 42  # form value "42" decoded like Telegram does


@pytest.mark.asyncio
async def test_send_message_validation(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(1, "a < b & c", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await bot.send_message(1, "😀" * 2049)  # 4098 UTF-16 code units
        await bot.send_message(1, "<b>" + "a" * 4096 + "</b>", parse_mode="HTML")  # tags are free
        with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
            await bot.send_message(1, "<b> </b>", parse_mode="HTML")
        tg.reject_html(1)
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
            await bot.send_message(1, "<b>fine</b>", parse_mode="HTML")
        await bot.send_message(1, "<b>fine</b>", parse_mode="HTML")
    assert [m.plain_text for m in tg.messages(1)] == ["a" * 4096, "fine"]


@pytest.mark.asyncio
async def test_edit_message_text(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        sent = await bot.send_message(7, "draft")
        await bot.edit_message_text("draft, longer", chat_id=7, message_id=sent.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await bot.edit_message_text("draft, longer", chat_id=7, message_id=sent.message_id)
        with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
            await bot.edit_message_text("x", chat_id=7, message_id=999)
    [msg] = tg.messages(7)
    assert msg.edit_count == 1 and msg.texts == ["draft", "draft, longer"]
    assert tg.wait_for_text(7, "longer", timeout=0.1).message_id == sent.message_id


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_fault_injection(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        tg.fail("sendMessage", 429, retry_after=3)
        with pytest.raises(RetryAfter) as caught:
            await bot.send_message(5, "x")
        assert retry_seconds(caught.value) == 3
        body = next(c for c in tg.calls("sendMessage"))
        assert body.params["text"] == "x"
        await bot.send_message(5, "x")  # times=1: consumed

        tg.block_chat(6)
        with pytest.raises(Forbidden, match="blocked by the user"):
            await bot.send_message(6, "x")
        await bot.send_message(5, "other chats still work")

        tg.fail("sendChatAction", 400, "Bad Request: chat not found", chat_id=8, times=None)
        with pytest.raises(BadRequest, match=r"(?i)chat not found"):
            await bot.send_chat_action(8, "typing")
        await bot.send_chat_action(5, "typing")
        assert tg.chat_actions(5) == ["typing"]

        tg.set_down(True)
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await bot.get_me()
        tg.set_down(False)

    with pytest.raises(InvalidToken):
        async with make_bot(tg, token="123456789:wrong") as _:
            pass


@pytest.mark.asyncio
async def test_get_updates_long_polling_and_offsets(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        first = tg.push_update(tg.text_update(100, 100, "/start@gateway_test_bot hi"))
        [update] = await bot.get_updates(timeout=5)
        assert update.update_id == first and update.message.text.startswith("/start")
        assert update.message.entities[0].type == "bot_command"
        assert update.message.entities[0].length == len("/start@gateway_test_bot")

        # Not confirmed yet: delivered again. Confirming with offset drops it.
        assert [u.update_id for u in await bot.get_updates()] == [first]
        started = time.monotonic()
        assert await bot.get_updates(offset=first + 1, timeout=5) == ()
        assert 0.4 <= time.monotonic() - started < 2  # waited, capped by long_poll_cap

        async def push_later() -> None:
            await asyncio.sleep(0.1)
            tg.push_update(tg.text_update(-500, 101, "hey @gateway_test_bot", chat_type="group"))

        pusher = asyncio.create_task(push_later())
        started = time.monotonic()
        [update] = await bot.get_updates(offset=first + 1, timeout=5)
        await pusher
        assert time.monotonic() - started < 0.4  # woke on arrival, not at the cap
        assert update.message.chat.type == "group" and update.message.chat.id == -500
        assert update.message.entities[0].type == "mention"

        # A redelivered update comes back even though it was confirmed.
        tg.push_update({"update_id": first, **tg.text_update(100, 100, "again")})
        redelivered = await bot.get_updates(offset=update.update_id + 1)
        assert [u.update_id for u in redelivered] == [first]
        assert tg.delivered_update_ids().count(first) == 3


@pytest.mark.asyncio
async def test_webhook_conflicts_with_polling(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        with pytest.raises(BadRequest, match=r"(?i)https url"):
            await bot.set_webhook("http://example.org/hook")
        await bot.set_webhook("https://example.org/hook", secret_token="s3cret_-x")
        assert tg.webhook["url"] == "https://example.org/hook"
        assert tg.webhook["secret_token"] == "s3cret_-x"
        assert (await bot.get_webhook_info()).url == "https://example.org/hook"
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()
        await bot.delete_webhook()
        assert await bot.get_updates() == ()


@pytest.mark.asyncio
async def test_commands_per_scope(tg: FakeTelegram) -> None:
    async with make_bot(tg) as bot:
        await bot.set_my_commands([("start", "Start"), ("help", "Help")])
        await bot.set_my_commands([("status", "Status")], scope=telegram.BotCommandScopeChat(900))
        with pytest.raises(BadRequest, match=r"(?i)bot_command_invalid"):
            await bot.set_my_commands([("Bad-Name", "x")])
        assert [c.command for c in await bot.get_my_commands()] == ["start", "help"]
    assert tg.commands() == [
        {"command": "start", "description": "Start"},
        {"command": "help", "description": "Help"},
    ]
    assert tg.commands({"type": "chat", "chat_id": 900}) == [
        {"command": "status", "description": "Status"}
    ]


@pytest.mark.asyncio
async def test_files_up_and_down(tg: FakeTelegram) -> None:
    update = tg.document_update(
        100, 100, b"%PDF-1.4 hello", "doc.pdf", "application/pdf", caption="read this"
    )
    tg.push_update(update)
    huge = tg.document_update(
        100, 100, b"x", "big.bin", "application/octet-stream", file_size=50 * 1024 * 1024
    )
    async with make_bot(tg) as bot:
        [received] = await bot.get_updates()
        assert received.message.document.file_name == "doc.pdf"
        file = await bot.get_file(received.message.document.file_id)
        assert bytes(await file.download_as_bytearray()) == b"%PDF-1.4 hello"
        with pytest.raises(BadRequest, match=r"(?i)file is too big"):
            await bot.get_file(huge["message"]["document"]["file_id"])

        sent = await bot.send_document(
            100, b"report", filename="r.txt", caption="<i>r</i>", parse_mode="HTML"
        )
        assert sent.document.file_name == "r.txt" and sent.caption == "r"
        await bot.send_photo(100, b"\x89PNG fake")
    [doc, photo] = tg.documents(100)
    assert (doc.kind, doc.file_name, doc.data, doc.caption) == (
        "document",
        "r.txt",
        b"report",
        "<i>r</i>",
    )
    assert photo.kind == "photo" and photo.data == b"\x89PNG fake"


@pytest.mark.asyncio
async def test_message_drafts_and_replies(tg: FakeTelegram) -> None:
    tg.push_update(tg.text_update(100, 100, "question"))
    user_message_id = tg.text_update(100, 100, "2nd")["message"]["message_id"]
    async with make_bot(tg) as bot:
        assert await bot.send_message_draft(100, 7, "thinking <b>hard</b>", parse_mode="HTML")
        with pytest.raises(BadRequest):
            await bot.send_message_draft(-5, 7, "groups have no drafts")
        reply = telegram.ReplyParameters(user_message_id)
        await bot.send_message(100, "answer", reply_parameters=reply)
        with pytest.raises(BadRequest, match=r"(?i)replied not found"):
            await bot.send_message(100, "x", reply_parameters=telegram.ReplyParameters(999))
        await bot.send_message(
            100,
            "x",
            reply_parameters=telegram.ReplyParameters(999, allow_sending_without_reply=True),
        )
    assert tg.drafts(100) == [
        {
            "draft_id": 7,
            "text": "thinking <b>hard</b>",
            "parse_mode": "HTML",
            "plain_text": "thinking hard",
        }
    ]
    assert [m.reply_to_message_id for m in tg.messages(100)] == [user_message_id, None]


def test_deliver_webhook(tg: FakeTelegram) -> None:
    received: list[tuple[str, str | None, dict[str, Any]]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            secret = self.headers.get("X-Telegram-Bot-Api-Secret-Token")
            received.append((self.path, secret, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(AssertionError, match="not set a webhook"):
            tg.deliver_webhook(tg.text_update(100, 100, "too early"), server.server_port)
        status, _ = post_json(
            f"{tg.base_url}/bot{TOKEN}/setWebhook",
            {"url": "https://example.org/tg/hook", "secret_token": "abc_DEF-1"},
        )
        assert status == 200
        status, _ = tg.deliver_webhook(tg.text_update(100, 100, "hi"), server.server_port)
        assert status == 200
    finally:
        server.shutdown()
        server.server_close()
    [(path, secret, update)] = received
    assert (path, secret, update["message"]["text"]) == ("/tg/hook", "abc_DEF-1", "hi")
    assert update["update_id"] in tg.delivered_update_ids()
    status, text = post_json(
        f"{tg.base_url}/bot{TOKEN}/setWebhook",
        {"url": "https://example.org/", "secret_token": "has:colon"},
    )
    assert status == 400 and "unallowed characters" in text


def test_post_json_helper(tg: FakeTelegram) -> None:
    status, text = post_json(f"{tg.base_url}/bot{TOKEN}/getMe", {})
    assert status == 200 and json.loads(text)["result"]["username"] == "gateway_test_bot"
    status, text = post_json(f"{tg.base_url}/bot{TOKEN}/noSuchMethod", b"{}")
    assert status == 404 and json.loads(text) == {
        "ok": False,
        "error_code": 404,
        "description": "Not Found",
    }
    assert tg.unknown_methods() == ["noSuchMethod"]
    status, text = post_json(f"{tg.base_url}/bot{TOKEN}/sendMessage", {"chat_id": 3, "text": ""})
    assert status == 400 and json.loads(text)["description"] == "Bad Request: message text is empty"


# ---------------------------------------------------------------- LLM via openai


@pytest.mark.asyncio
async def test_streamed_reply_with_usage(llm: FakeLLM) -> None:
    llm.enqueue(Reply("Hello, streaming world!", chunk_chars=5, usage=(11, 7)))
    async with make_client(llm) as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        assert "".join(pieces) == "Hello, streaming world!" and len(pieces) > 3
        assert finish == "stop"
        assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
        request = llm.last_request()
        assert request.header("AUTHORIZATION") == "Bearer sk-test" and request.stream


@pytest.mark.asyncio
async def test_default_echo_and_estimated_usage(llm: FakeLLM) -> None:
    async with make_client(llm) as client:
        result = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": "s" * 39}, {"role": "user", "content": "ping"}],
        )
        assert result.choices[0].message.content == "echo: ping"
        assert result.usage is not None and result.usage.prompt_tokens == (39 + 4) // 4 + 1
        assert llm.count() == 1


@pytest.mark.asyncio
async def test_tool_call_stream(llm: FakeLLM) -> None:
    arguments = json.dumps({"query": "weather in Paris", "units": "metric"})
    llm.enqueue(ToolCalls([("call_abc", "search", arguments), ("call_def", "clock", "{}")]))
    async with make_client(llm) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "?"}], stream=True
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in stream:
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                if delta.function:
                    entry["name"] += delta.function.name or ""
                    entry["arguments"] += delta.function.arguments or ""
        assert finish == "tool_calls"
        assert calls[0] == {"id": "call_abc", "name": "search", "arguments": arguments}
        assert calls[1] == {"id": "call_def", "name": "clock", "arguments": "{}"}


@pytest.mark.asyncio
async def test_llm_errors(llm: FakeLLM) -> None:
    async with make_client(llm, timeout=0.3) as client:
        messages = [{"role": "user", "content": "x"}]
        llm.enqueue(Error(500, {"error": {"message": "boom", "type": "server_error"}}))
        with pytest.raises(openai.InternalServerError, match="boom"):
            await client.chat.completions.create(model=MODEL, messages=messages)
        llm.enqueue(Error.rate_limited(retry_after=2))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        assert caught.value.response.headers["retry-after"] == "2"
        llm.enqueue(Hang(1.0))
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model=MODEL, messages=messages)
        llm.enqueue(Malformed("no_choices"))
        assert (await client.chat.completions.create(model=MODEL, messages=messages)).choices == []
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-5-huge", messages=messages)

        llm.fail_all(Error.server_error("down"))
        llm.enqueue(Reply("kept for later"))
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(model=MODEL, messages=messages)
        llm.clear_failures()
        result = await client.chat.completions.create(model=MODEL, messages=messages)
        assert result.choices[0].message.content == "kept for later"

    wrong = openai.AsyncOpenAI(base_url=llm.base_url, api_key="sk-wrong-key", max_retries=0)
    async with wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()


@pytest.mark.asyncio
async def test_malformed_answers(llm: FakeLLM) -> None:
    """Pins how the openai client surfaces broken bodies, which the bot must classify."""
    messages = [{"role": "user", "content": "x"}]
    async with make_client(llm) as client:
        llm.enqueue(Malformed("not_json"))
        odd = await client.chat.completions.create(model=MODEL, messages=messages)
        assert isinstance(odd, str)  # non-JSON 200 comes back as the raw text, no exception
        llm.enqueue(Malformed("empty"))
        with pytest.raises(json.JSONDecodeError):  # not an openai.APIError subclass
            await client.chat.completions.create(model=MODEL, messages=messages)
        llm.enqueue(Malformed("bad_tool_json"))
        result = await client.chat.completions.create(model=MODEL, messages=messages)
        [call] = result.choices[0].message.tool_calls or []
        with pytest.raises(json.JSONDecodeError):
            json.loads(call.function.arguments)
        llm.enqueue(Reply("a" * 50, chunk_chars=5, cut_after_chunks=2))
        stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
        received: list[str] = []

        async def drain() -> None:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

        with pytest.raises(openai.APIConnectionError):
            await drain()
        assert "".join(received) == "a" * 10


async def test_inline_buttons_presses_answers_and_markup_edits(tg: FakeTelegram) -> None:
    keyboard = telegram.InlineKeyboardMarkup([[telegram.InlineKeyboardButton("Approve", callback_data="a:1")]])
    async with make_bot(tg) as bot:
        sent = await bot.send_message(900, "request", reply_markup=keyboard)
        [message] = tg.messages(900)
        assert message.reply_markup == {"inline_keyboard": [[{"text": "Approve", "callback_data": "a:1"}]]}
        update = tg.callback_update(900, sent.message_id, 555, "a:1", update_id=7)
        query = telegram.Update.de_json(update, bot).callback_query
        assert query.data == "a:1" and query.from_user.id == 555 and query.message.message_id == sent.message_id
        assert await bot.answer_callback_query(query.id, text="done")
        with pytest.raises(BadRequest, match="(?i)query is too old"):  # answered once only
            await bot.answer_callback_query(query.id)
        assert tg.callback_answers() == [{"callback_query_id": query.id, "text": "done", "show_alert": False}]
        await bot.edit_message_reply_markup(900, sent.message_id)  # no markup: the buttons are removed
        assert tg.messages(900)[0].reply_markup is None
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_reply_markup(900, sent.message_id)
        with pytest.raises(AssertionError):
            tg.callback_update(900, 99, 555, "a:1")
