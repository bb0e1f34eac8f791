"""Voice notes and every other kind of message, end to end: the real `python -m bot` process
against the Bot API and LLM stand-ins.

A voice note is checked against VOICE_MAX_SECONDS before getFile, downloaded once, stored,
transcribed at `/audio/transcriptions`, and answered from its transcript with the heard line
first; a failed transcription ends like any failed turn and its replay (after a restart) uses
the stored sound. Stickers, video notes and locations are answered; a video gets a notice.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.harness import OPERATOR_ID, run_cli
from tests.e2e.test_failures import FAST, REF, ask_operator, dlq_entries
from tests.fakes.llm_api import Error, FakeLLM
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
AUDIO = b"OggS\x00\x02fake-opus-voice-note" + bytes(range(256)) * 8


def get_files(fake_telegram: FakeTelegram) -> int:
    return len(fake_telegram.calls("getFile"))


def usage_rows(bot, model: str) -> list[tuple]:  # noqa: ANN001 - the BotFactory fixture
    return bot.query("SELECT user_id, output_tokens, cost_usd FROM usage WHERE model = ?", [model])


def test_voice_note_is_answered_from_its_transcript(bot, fake_telegram, fake_llm) -> None:
    proc = bot(**FAST)
    fake_llm.transcript = "What is the weather like on Mars?"
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO, duration=4))
    answer = fake_telegram.wait_for_text(USER, "echo: What is the weather like on Mars?", timeout=20).plain_text
    assert answer.startswith("🎤 “What is the weather like on Mars?”"), answer
    [request] = fake_llm.transcriptions()
    assert b'name="model"\r\n\r\nwhisper-1' in request.raw and AUDIO in request.raw
    assert fake_llm.last_request().messages[-1]["content"] == "What is the weather like on Mars?"
    assert get_files(fake_telegram) == 1
    [(user, tokens, cost)] = usage_rows(bot, "whisper-1")  # priced per minute, tokens on the user
    assert user == USER and tokens > 0 and cost == pytest.approx(4 / 60 * 0.006)
    assert proc.stop() == 0  # spans are flushed
    names = {span["span_id"]: span["name"] for span in bot.spans()}
    spans = [(s["name"], names.get(s["parent_span_id"])) for s in bot.spans() if s["name"].startswith("transcribe ")]
    assert spans == [("transcribe whisper-1", "ingest")]


def test_transcript_line_can_be_turned_off(bot, fake_telegram, fake_llm) -> None:
    bot(VOICE_SHOW_TRANSCRIPT="false", TRANSCRIPTION_MODEL="whisper-large-v3", **FAST)
    fake_llm.transcript = "hello there"
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO, kind="audio"))
    answer = fake_telegram.wait_for_text(USER, "echo: hello there", timeout=20).plain_text
    assert "🎤" not in answer
    assert b"whisper-large-v3" in fake_llm.transcriptions()[0].raw


def test_over_long_voice_note_is_refused_before_get_file(bot, fake_telegram, fake_llm) -> None:
    bot(VOICE_MAX_SECONDS="60", **FAST)
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO, duration=61))
    notice = fake_telegram.wait_for_text(USER, "1:01 long", timeout=20).plain_text
    assert "up to 1:00" in notice
    assert get_files(fake_telegram) == 0 and fake_llm.transcriptions() == [] and fake_llm.count() == 0


def test_failed_transcription_is_dead_lettered_and_replayed_from_the_stored_audio(
        bot, fake_telegram, fake_llm) -> None:
    first = bot(DLQ_AUTO_REPLAY="false", **FAST)
    fake_llm.fail_transcriptions(Error.server_error())
    fake_llm.transcript = "remind me to water the plants"
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO))
    error = fake_telegram.wait_for_text(USER, "ref:", timeout=20).plain_text
    ref = REF.search(error).group(1)
    assert len(fake_llm.transcriptions()) == 2  # one retry, like a chat call
    [entry] = dlq_entries(first)
    assert entry["ref"] == ref and entry["error_kind"] == "llm_server"
    fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=20)  # the operator is alerted
    assert get_files(fake_telegram) == 1
    first.stop()

    bot(DLQ_AUTO_REPLAY="false", **FAST)
    fake_llm.fail_transcriptions(None)
    listing = ask_operator(fake_telegram, "/dlq", f"ref: {ref}")
    entry_id = re.search(rf"#(\d+) \S+ chat {USER} .*ref: {ref}", listing).group(1)
    ask_operator(fake_telegram, f"/replay {entry_id}", "answer delivered", timeout=20)
    late = fake_telegram.wait_for_text(USER, "echo: remind me to water the plants", timeout=20).plain_text
    assert "Sorry for the delay" in late and "🎤 “remind me to water the plants”" in late
    assert len(fake_llm.transcriptions()) == 3
    assert get_files(fake_telegram) == 1  # the stored sound, not a second download


def test_sticker_video_note_and_location_are_answered(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_telegram.push_update(fake_telegram.media_update(
        USER, USER, "sticker", {"file_id": "STICKER1", "file_unique_id": "S1", "type": "regular", "width": 512,
                                "height": 512, "is_animated": False, "is_video": False, "emoji": "👍"}))
    fake_telegram.wait_for_text(USER, "echo: [The user sent a sticker: 👍.]", timeout=20)

    fake_llm.transcript = "this is my video note"
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO, kind="video_note"))
    answer = fake_telegram.wait_for_text(USER, "echo: this is my video note", timeout=20).plain_text
    assert answer.startswith("🎤")

    fake_telegram.push_update(fake_telegram.media_update(
        USER, USER, "location", {"latitude": 48.858370, "longitude": 2.294481}))
    fake_telegram.wait_for_text(USER, "latitude 48.858370, longitude 2.294481", timeout=20)

    fake_telegram.push_update(fake_telegram.media_update(
        USER, USER, "video", {"width": 640, "height": 480, "duration": 5}, data=b"\x00\x00\x00\x18ftypmp42"))
    fake_telegram.wait_for_text(USER, "I can't watch a video yet", timeout=20)
    assert len(fake_llm.transcriptions()) == 1  # videos are not transcribed

    # A forwarded story has no words for the model: a short reply, not silence (and no LLM call).
    calls = fake_llm.count()
    fake_telegram.push_update(fake_telegram.media_update(
        USER, USER, "story", {"chat": {"id": 555, "type": "channel", "title": "News"}, "id": 3}))
    fake_telegram.wait_for_text(USER, "I can't read that kind of message yet", timeout=20)
    assert fake_llm.count() == calls


def test_doctor_detects_an_endpoint_without_transcription(bot, fake_llm) -> None:
    good = run_cli(bot.env(), "doctor")
    assert "[ok  ] transcription:" in good.stdout, good.stdout
    fake_llm.transcription_enabled = False
    bad = run_cli(bot.env(), "doctor")
    assert bad.returncode == 1
    assert "[FAIL] transcription:" in bad.stdout and "(404)" in bad.stdout and "TRANSCRIPTION_BASE_URL" in bad.stdout


def test_a_transcription_that_could_cross_the_monthly_cap_is_refused_before_download(
        bot, fake_telegram, fake_llm) -> None:
    bot(MONTHLY_BUDGET_USD="5", TRANSCRIPTION_MODEL="unpriced-whisper", **FAST)
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO))
    fake_telegram.wait_for_text(USER, "The price of this model is unknown", timeout=20)
    assert get_files(fake_telegram) == 0 and fake_llm.transcriptions() == [] and fake_llm.count() == 0


def test_voice_note_with_voice_on_is_answered_in_text_then_spoken(bot, fake_telegram, fake_llm) -> None:
    """The whole spoken round trip in the bot process: a voice note is transcribed, answered in text
    (heard line first), then the answer alone, without the heard line, is read aloud and sent with
    sendVoice; a typed message in the same chat stays text only."""
    bot(**FAST)
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "/voice on"))
    fake_telegram.wait_for_text(USER, "Spoken answers are on", timeout=20)
    fake_llm.transcript = "read me a short poem"
    fake_telegram.push_update(fake_telegram.voice_update(USER, USER, AUDIO, duration=3))
    text = fake_telegram.wait_for_text(USER, "echo: read me a short poem", timeout=20).plain_text
    assert text.startswith("🎤 “read me a short poem”")
    deadline = time.monotonic() + 20
    while not fake_telegram.calls("sendVoice") and time.monotonic() < deadline:
        time.sleep(0.05)
    [voice] = fake_telegram.documents(USER, "voice")
    assert voice.data == FakeLLM.SPEECH_AUDIO
    [speech] = fake_llm.speeches()
    assert speech.body["input"] == "echo: read me a short poem"  # the answer, not the heard line
    assert [m.kind for m in fake_telegram.messages(USER)][-2:] == ["text", "voice"]  # text first

    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "typed now"))
    fake_telegram.wait_for_text(USER, "echo: typed now", timeout=20)
    assert len(fake_llm.speeches()) == 1 and len(fake_telegram.calls("sendVoice")) == 1
