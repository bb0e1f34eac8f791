"""A real PTB `Bot` talking to the Bot API stand-in, for channel tests that need Telegram's answers
(errors, markup parsing, answers a client cannot read) rather than a mock's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from telegram import Bot

from bot.channel import TelegramChannel
from tests.fakes.telegram_api import FakeTelegram

TOKEN = "123456:channel-test-secret"
CHAT = 42


@pytest.fixture
def fake_telegram() -> Iterator[FakeTelegram]:
    fake = FakeTelegram(TOKEN).start()
    try:
        yield fake
    finally:
        fake.stop()
    assert not fake.server_errors(), fake.server_errors()


def ptb_bot(base_url: str) -> Bot:
    return Bot(TOKEN, base_url=f"{base_url}/bot", base_file_url=f"{base_url}/file/bot")


@pytest.fixture
async def channel(fake_telegram: FakeTelegram) -> AsyncIterator[TelegramChannel]:
    async with ptb_bot(fake_telegram.base_url) as bot:
        yield TelegramChannel(bot)
