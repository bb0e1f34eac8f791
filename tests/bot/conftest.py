"""Harnesses for the Telegram layer, both with a real PTB `Bot` talking to the Bot API stand-in over
127.0.0.1 (Telegram's answers: errors, markup parsing, answers a client cannot read, not a mock's):

- `channel`: a TelegramChannel alone, for delivery tests;
- `harness`: the real Runtime (journal, routing, pipeline, channel) with a scripted LLM; tests enter
  through `runtime.process_raw`, as the webhook does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from telegram import Bot

from bot.channel import TelegramChannel
from bot.runtime import Runtime
from config.settings import Settings
from core.services import Services, build_services
from tests.core.fakes import ScriptedLLM
from tests.e2e.harness import TEST_TOKEN
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


ALLOWED, STRANGER, OPERATOR, GROUP = 100, 555, 900, -5000


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    fake: FakeTelegram
    services: Services
    runtime: Runtime
    llm: ScriptedLLM

    def journal(self, update_id: int) -> tuple[str, str | None] | None:
        row = self.services.db.conn.execute("SELECT state, error FROM journal WHERE update_id = ?", [update_id]).fetchone()
        return (row[0], row[1]) if row else None

    def dlq_count(self, update_id: int) -> int:
        return self.services.db.conn.execute("SELECT COUNT(*) FROM dlq WHERE update_id = ?", [update_id]).fetchone()[0]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    fake = FakeTelegram(TEST_TOKEN).start()
    loop = asyncio.new_event_loop()
    config = Settings(_env_file=None, data_dir=tmp_path / "data", operator_chat_id=OPERATOR,
                      allowed_user_ids=f"{ALLOWED},101", retry_wait_scale=0.0, dlq_auto_replay=False,
                      breaker_failure_threshold=10_000, user_messages_per_minute=0, user_daily_token_budget=0)
    llm = ScriptedLLM()
    services = loop.run_until_complete(build_services(config, llm=llm))
    bot = Bot(TEST_TOKEN, base_url=f"{fake.base_url}/bot", base_file_url=f"{fake.base_url}/file/bot")
    loop.run_until_complete(bot.initialize())
    runtime = Runtime(services, bot)
    runtime.set_identity(bot.id, bot.username)
    try:
        yield Harness(loop, fake, services, runtime, llm)
    finally:
        loop.run_until_complete(runtime.wait_background(5))
        loop.run_until_complete(bot.shutdown())
        loop.run_until_complete(services.close())
        loop.close()
        fake.stop()
    assert not fake.server_errors(), fake.server_errors()
