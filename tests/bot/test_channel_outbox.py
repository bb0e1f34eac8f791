"""What the outbox resends through the channel: a kept reply keeps its formatting (HTML rendered
from the stored Markdown, plain when Telegram rejects the markup); an operator alert stays plain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.channel import TelegramChannel
from core.failures.escalation import Outbox, drain_outbox, iso
from core.store import open_sqlite
from tests.bot.conftest import CHAT
from tests.fakes.telegram_api import FakeTelegram

ANSWER = "Paris is the **capital** of France.\n\n- one\n- two"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def kept(outbox: Outbox, kind: str, text: str) -> None:
    await outbox.enqueue(kind=kind, chat_id=CHAT, text=text, trace_id=None, dedupe_key=f"{kind}:{text}", now=iso(T0))


async def test_a_kept_reply_refused_first_is_resent_as_html(channel: TelegramChannel,
                                                            fake_telegram: FakeTelegram) -> None:
    outbox = Outbox(open_sqlite(":memory:"))
    await kept(outbox, "reply", ANSWER)
    fake_telegram.fail("sendMessage", 500, chat_id=CHAT)
    assert await drain_outbox(outbox, channel, now=lambda: T0) == 0  # refused: kept for later
    assert await drain_outbox(outbox, channel, now=lambda: T0 + timedelta(minutes=5)) == 1
    [message] = fake_telegram.messages(CHAT)
    assert message.parse_mode == "HTML"
    assert "<b>capital</b>" in (message.text or "")
    assert message.plain_text == "Paris is the capital of France.\n\n• one\n• two"


async def test_a_kept_reply_with_markup_telegram_rejects_goes_plain(channel: TelegramChannel,
                                                                   fake_telegram: FakeTelegram) -> None:
    fake_telegram.reject_html()
    await channel.send_text(CHAT, ANSWER, markdown=True)
    [message] = fake_telegram.messages(CHAT)
    assert (message.text, message.parse_mode) == (ANSWER, None)


async def test_a_long_kept_reply_is_sent_in_parts(channel: TelegramChannel, fake_telegram: FakeTelegram) -> None:
    paragraph = "Some **bold** words. " * 40
    await channel.send_text(CHAT, "\n\n".join([paragraph] * 12), markdown=True)
    messages = fake_telegram.messages(CHAT)
    assert len(messages) == 3 and all(m.parse_mode == "HTML" and "<b>bold</b>" in (m.text or "") for m in messages)


async def test_an_alert_is_sent_as_written(channel: TelegramChannel, fake_telegram: FakeTelegram) -> None:
    alert = "[ERROR] llm_malformed: *not* an answer\nkind: llm_malformed\nref: 0123abcd"
    outbox = Outbox(open_sqlite(":memory:"))
    await kept(outbox, "alert", alert)
    assert await drain_outbox(outbox, channel, now=lambda: T0) == 1
    [message] = fake_telegram.messages(CHAT)
    assert (message.text, message.parse_mode) == (alert, None)
