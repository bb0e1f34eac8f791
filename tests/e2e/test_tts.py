"""Spoken answers end to end.

Two levels, because the "user spoke" half comes from the voice-note intake (another part of
issue #13, which sets `InboundMessage.spoken`):
- the real bot process over HTTP: `/voice on|off` is answered, stored and survives a restart, is
  in the command menu, and a *typed* message with voice on is answered in text only (no speech
  call, no sendVoice);
- in process, over real HTTP to both stand-ins: a spoken message's turn through the real pipeline,
  the real speech client (openai SDK, `/audio/speech`) and the real Telegram channel (PTB
  `sendVoice`, multipart): the text answer first, then the voice note with the stand-in's bytes;
  a failing speech call leaves the text answer, no DLQ entry, and a count in /status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from telegram import Bot

from bot.channel import TelegramChannel
from config.settings import Settings
from core.contracts import InboundMessage
from core.pipeline import Pipeline
from core.services import Services, build_services
from core.status import status_text
from core.store import read_counter
from core.telemetry import find_trace
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import ScriptedLLM
from tests.e2e.harness import TEST_LLM_KEY, TEST_TOKEN
from tests.fakes.llm_api import Error, FakeLLM
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
CHAT = 100


def say(fake_telegram: FakeTelegram, text: str, user: int = CHAT) -> None:
    fake_telegram.push_update(fake_telegram.text_update(user, user, text))


def answer(fake_telegram: FakeTelegram, substring: str, timeout: float = 15) -> str:
    message = fake_telegram.wait_for_text(CHAT, substring, timeout=timeout)
    return message.plain_text or message.text or ""


def menu(fake_telegram: FakeTelegram, since: float) -> list[str]:
    call = [c for c in fake_telegram.calls("setMyCommands") if c.at >= since][0]
    commands = call.params["commands"]
    commands = json.loads(commands) if isinstance(commands, str) else commands
    return [c["command"] for c in commands]


# The bot process --------------------------------------------------------------------------
def test_voice_setting_is_per_chat_survives_a_restart_and_typed_text_stays_text(bot, fake_telegram,
                                                                                fake_llm) -> None:
    started = time.monotonic()
    first = bot()
    assert "voice" in menu(fake_telegram, started)
    say(fake_telegram, "/voice")
    answer(fake_telegram, "Spoken answers are off in this chat")
    say(fake_telegram, "/voice on")
    answer(fake_telegram, "Spoken answers are on")
    say(fake_telegram, "typed, not spoken")
    answer(fake_telegram, "echo: typed, not spoken")
    assert first.stop() == 0
    assert fake_llm.speeches() == [] and fake_telegram.calls("sendVoice") == []  # the user did not speak

    bot()
    say(fake_telegram, "/voice")
    answer(fake_telegram, "Spoken answers are on in this chat")  # stored, not forgotten at restart
    say(fake_telegram, "/voice off")
    answer(fake_telegram, "Spoken answers are off: I answer in text only.")
    say(fake_telegram, "/voice", user=101)
    fake_telegram.wait_for_text(101, "Spoken answers are off in this chat", timeout=15)


# In process, real HTTP clients ------------------------------------------------------------
@pytest.fixture
async def spoken_turns(fake_telegram: FakeTelegram, fake_llm: FakeLLM,
                       tmp_path: Path) -> AsyncIterator[tuple[Services, Pipeline, TelegramChannel]]:
    """Real services whose speech client points at the LLM stand-in (chat answers are scripted:
    the speech client is the one under test), and the Telegram channel on the Bot API stand-in."""
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", llm_base_url=fake_llm.base_url,
                        llm_api_key=TEST_LLM_KEY, allowed_user_ids=str(CHAT), operator_chat_id=900,
                        retry_wait_scale=0.0)
    services = await build_services(settings, llm=ScriptedLLM())
    async with Bot(TEST_TOKEN, base_url=f"{fake_telegram.base_url}/bot",
                   base_file_url=f"{fake_telegram.base_url}/file/bot") as ptb:
        yield services, Pipeline(services), TelegramChannel(ptb, tracer=services.tracer)
    await services.close()


async def spoken_turn(services: Services, pipeline: Pipeline, channel: TelegramChannel, text: str,
                      update_id: int = 1) -> tuple[str, str]:
    with new_turn_span(services.tracer, "turn"):
        trace_id = current_trace_id()
        inbound = InboundMessage(update_id=update_id, trace_id=trace_id, chat_id=CHAT, chat_type="private",
                                 user_id=CHAT, text=text, spoken=True, received_at=datetime.now(UTC))
        return await pipeline.run_turn(inbound, channel), trace_id


async def test_spoken_message_answered_in_text_then_as_a_voice_note(spoken_turns, fake_telegram, fake_llm) -> None:
    services, pipeline, channel = spoken_turns
    await services.voice_replies.set(CHAT, True, now=services.clock.iso())
    outcome, trace_id = await spoken_turn(services, pipeline, channel, "what time is it")
    assert outcome == "replied"
    kinds = [m.kind for m in fake_telegram.messages(CHAT)]
    assert kinds == ["text", "voice"]  # the text answer first
    assert fake_telegram.sent_texts(CHAT)[0] == "echo: what time is it"
    [voice] = fake_telegram.documents(CHAT, "voice")
    assert voice.data == FakeLLM.SPEECH_AUDIO  # the stand-in's Opus bytes, sent as multipart sendVoice
    [speech] = fake_llm.speeches()
    assert speech.header("Authorization") == f"Bearer {TEST_LLM_KEY}"
    assert speech.body == {"model": "tts-1", "voice": "alloy", "input": "echo: what time is it",
                           "response_format": "opus"}
    assert speech.header("traceparent", "").split("-")[1] == trace_id
    services.telemetry.force_flush()
    spans = {span.name: span for span in find_trace(services.telemetry.db_path, trace_id)}
    assert "speak" in spans and spans["speech tts-1"].status != "ERROR"
    assert await read_counter(services.db, "speech_sent") == 1
    cost = services.db.conn.execute("SELECT cost_usd FROM usage WHERE model = 'tts-1'").fetchone()[0]
    assert cost == pytest.approx(len("echo: what time is it") * 15.0 / 1_000_000)


async def test_failing_speech_leaves_the_text_answer_and_no_dlq_entry(spoken_turns, fake_telegram, fake_llm) -> None:
    services, pipeline, channel = spoken_turns
    await services.voice_replies.set(CHAT, True, now=services.clock.iso())
    fake_llm.fail_speech(Error.server_error("speech is down"))
    outcome, trace_id = await spoken_turn(services, pipeline, channel, "hello")
    assert outcome == "replied"
    assert fake_telegram.sent_texts(CHAT) == ["echo: hello"] and fake_telegram.calls("sendVoice") == []
    assert len(fake_llm.speeches()) == 1  # one attempt: an extra is not retried
    assert await services.dlq.depth() == 0
    assert "Spoken answers: 0 sent, 1 failed" in await status_text(services, chat_id=CHAT, operator=False)
    services.telemetry.force_flush()
    spans = {span.name: span for span in find_trace(services.telemetry.db_path, trace_id)}
    assert spans["speech tts-1"].status == "ERROR" and spans["speak"].attributes["speech.failed"]
    assert spans["turn"].status != "ERROR"

    fake_llm.fail_speech(None)  # back up: the next spoken message gets its voice note again
    await spoken_turn(services, pipeline, channel, "again", update_id=2)
    assert [m.kind for m in fake_telegram.messages(CHAT)] == ["text", "text", "voice"]


async def test_voice_off_stops_spoken_answers(spoken_turns, fake_telegram, fake_llm) -> None:
    services, pipeline, channel = spoken_turns
    await services.voice_replies.set(CHAT, True, now=services.clock.iso())
    await services.voice_replies.set(CHAT, False, now=services.clock.iso())
    outcome, trace_id = await spoken_turn(services, pipeline, channel, "hello")
    assert outcome == "replied"
    assert [m.kind for m in fake_telegram.messages(CHAT)] == ["text"]
    assert fake_llm.speeches() == []
    services.telemetry.force_flush()
    spans = [span.name for span in find_trace(services.telemetry.db_path, trace_id)]
    assert "reply" in spans and "speak" not in spans  # a turn without a voice note pays no span for it


