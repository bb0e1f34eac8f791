"""The channels' voice-note event (a spoken answer): Telegram sends it with sendVoice, as a reply to
the user's message, and maps a refusal to DeliveryFailed; the console says one was made."""

from __future__ import annotations

import io
import json

import pytest

from bot.channel import TelegramChannel
from bot.console import ConsoleChannel
from core.contracts import ReplyEvent
from core.ports import DeliveryFailed
from tests.bot.conftest import CHAT
from tests.fakes.telegram_api import FakeTelegram

AUDIO = b"OggS\x00\x02opus-bytes"


def voice(audio: bytes | None = AUDIO, reply_to: int | None = None) -> ReplyEvent:
    return ReplyEvent(kind="voice", trace_id="ab" * 16, chat_id=CHAT, audio=audio, reply_to_message_id=reply_to)


async def test_voice_event_is_a_send_voice_with_the_bytes(channel: TelegramChannel, fake_telegram: FakeTelegram) -> None:
    await channel.deliver(voice(reply_to=5))
    [sent] = fake_telegram.documents(CHAT, "voice")
    assert sent.data == AUDIO
    [call] = fake_telegram.calls("sendVoice")
    reply = call.params["reply_parameters"]
    assert (json.loads(reply) if isinstance(reply, str) else reply)["message_id"] == 5


async def test_voice_event_without_audio_sends_nothing(channel: TelegramChannel, fake_telegram: FakeTelegram) -> None:
    await channel.deliver(voice(audio=None))
    assert fake_telegram.calls("sendVoice") == []


async def test_refused_voice_note_is_delivery_failed(channel: TelegramChannel, fake_telegram: FakeTelegram) -> None:
    fake_telegram.fail("sendVoice", 403, "Forbidden: bot was blocked by the user")
    with pytest.raises(DeliveryFailed) as failed:
        await channel.deliver(voice())
    assert failed.value.permanent


async def test_the_console_says_a_voice_note_was_made() -> None:
    out = io.StringIO()
    await ConsoleChannel(out).deliver(voice(audio=b"OggS1234"))
    assert out.getvalue() == "bot (voice note, 8 bytes)\n"
