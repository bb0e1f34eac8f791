"""Spoken answers at pipeline level: the voice note after the reply stage's text, with a scripted Speaker.

The e2e tests (tests/e2e/test_tts.py) drive /voice and the real speech client over HTTP; the
"user spoke" flag (`InboundMessage.spoken`) is set by the voice-note intake, so here it is set
on the inbound message directly.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.contracts import InboundMessage
from core.ports import DeliveryFailed
from core.speech import MAX_SPEECH_CHARS, speech_input
from core.status import status_text
from core.store import open_sqlite, read_counter
from core.store.interfaces import VoiceReplyStore
from core.store.voice_replies import VoiceReplies
from core.tracing import current_trace_id, new_turn_span
from core.usage import utc_month
from tests.core.fakes import MakePipeline, ScriptedSpeaker
from tests.core.test_store_interfaces import mismatches


async def turn(services, pipeline, channel, text: str, *, spoken: bool, update_id: int = 1) -> str:
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=update_id, trace_id=current_trace_id(), chat_id=100, chat_type="private",
                                 user_id=100, text=text, spoken=spoken, message_id=7, received_at=datetime.now(UTC))
        return await pipeline.run_turn(inbound, channel)


def kinds(channel) -> list[str]:
    return [e.kind for e in channel.events if e.kind in ("final", "voice", "error")]


async def test_spoken_message_with_voice_on_gets_text_then_voice_note_priced(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    await services.voice_replies.set(100, True, now=services.clock.iso())
    llm.enqueue("It is sunny today.")
    assert await turn(services, pipeline, channel, "what is the weather", spoken=True) == "replied"
    assert kinds(channel) == ["final", "voice"]
    voice = channel.events[-1]
    assert voice.audio == ScriptedSpeaker.AUDIO and voice.chat_id == 100 and voice.reply_to_message_id == 7
    assert services.speaker.texts == ["It is sunny today."]
    rows = services.db.conn.execute("SELECT model, total_tokens, cost_usd FROM usage WHERE model = 'tts-1'").fetchall()
    assert rows == [("tts-1", 0, pytest.approx(len("It is sunny today.") * 15.0 / 1_000_000))]
    assert await services.ledger.month_cost_usd(utc_month(services.clock.now())) >= rows[0][2]  # counts toward the cap
    assert await read_counter(services.db, "speech_sent") == 1
    assert "Spoken answers: 1 sent, 0 failed" in await status_text(services, chat_id=100, operator=False)


@pytest.mark.parametrize(("voice_on", "spoken"), [(False, True), (True, False)])
async def test_no_voice_note_unless_on_and_spoken(make_pipeline: MakePipeline, voice_on: bool, spoken: bool) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    await services.voice_replies.set(100, voice_on, now=services.clock.iso())
    assert await turn(services, pipeline, channel, "hello", spoken=spoken) == "replied"
    assert kinds(channel) == ["final"]
    assert services.speaker.texts == []
    assert "Spoken answers" not in await status_text(services, chat_id=100, operator=False)


async def test_failed_speech_keeps_the_text_answer_and_is_counted(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    await services.voice_replies.set(100, True, now=services.clock.iso())
    services.speaker.fail = RuntimeError("speech endpoint down")
    assert await turn(services, pipeline, channel, "hello", spoken=True) == "replied"
    assert kinds(channel) == ["final"]
    assert await services.dlq.depth() == 0
    assert await read_counter(services.db, "speech_failed") == 1
    assert services.db.conn.execute("SELECT COUNT(*) FROM usage WHERE model = 'tts-1'").fetchone()[0] == 0
    assert "Spoken answers: 0 sent, 1 failed" in await status_text(services, chat_id=100, operator=False)


async def test_voice_note_telegram_refuses_is_counted_not_a_failed_turn(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    await services.voice_replies.set(100, True, now=services.clock.iso())
    deliver = channel.deliver

    async def refuse_voice(event) -> None:
        if event.kind == "voice":
            raise DeliveryFailed("voice messages are forbidden", permanent=True)
        await deliver(event)

    channel.deliver = refuse_voice
    assert await turn(services, pipeline, channel, "hello", spoken=True) == "replied"
    assert kinds(channel) == ["final"] and await read_counter(services.db, "speech_failed") == 1
    assert await services.dlq.depth() == 0


async def test_unknown_speech_price_with_a_monthly_cap_is_refused(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline(monthly_budget_usd=5.0)
    services.speaker.model = "some-local-tts"
    await services.voice_replies.set(100, True, now=services.clock.iso())
    assert await turn(services, pipeline, channel, "hello", spoken=True) == "replied"
    assert kinds(channel) == ["final"]
    assert services.speaker.texts == []  # refused before the call: nothing spent
    assert await read_counter(services.db, "speech_failed") == 1


async def test_no_voice_note_when_the_text_answer_could_not_be_delivered(make_pipeline: MakePipeline) -> None:
    services, pipeline, llm, channel = await make_pipeline()
    await services.voice_replies.set(100, True, now=services.clock.iso())
    channel.fail_final = DeliveryFailed("Telegram is busy", permanent=False)
    assert await turn(services, pipeline, channel, "hello", spoken=True) == "replied"
    assert kinds(channel) == [] and services.speaker.texts == []  # the text comes first, or nothing


def test_speech_input_is_cut_at_the_provider_limit_on_a_word() -> None:
    assert speech_input("  short answer ") == "short answer"
    long = "word " * 2000
    cut = speech_input(long)
    assert len(cut) <= MAX_SPEECH_CHARS and cut.endswith("word")


async def test_voice_replies_store_default_off_and_survives_reopen(tmp_path) -> None:
    db = open_sqlite(tmp_path / "g.db")
    store = VoiceReplies(db)
    assert isinstance(store, VoiceReplyStore) and mismatches(VoiceReplyStore, VoiceReplies) == []
    assert await store.is_on(5) is False
    await store.set(5, True, now="2026-01-01T00:00:00")
    await store.set(5, True, now="2026-01-02T00:00:00")  # idempotent
    db.conn.close()
    again = VoiceReplies(open_sqlite(tmp_path / "g.db"))
    assert await again.is_on(5) is True and await again.is_on(6) is False
    await again.set(5, False, now="2026-01-03T00:00:00")
    assert await again.is_on(5) is False

