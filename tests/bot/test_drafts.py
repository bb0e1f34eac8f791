"""Streaming drafts (bot/channel.py): pacing per chat, one call in flight, a preview cut only when
an edit is due, the final answer replacing the draft, and answers past Telegram's 4096 limit."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import bot.channel as channel_module
from bot.channel import EDIT_INTERVAL_S, FIRST_DRAFT_S, TelegramChannel
from bot.render import TELEGRAM_TEXT_LIMIT, utf16_len
from core.contracts import ReplyEvent

TRACE = "cd" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class RecordingBot:
    """Records each call with the clock's time; `hold` keeps calls in flight until it is set."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, str, int, str, Any]] = []  # (at, method, chat, text, parse_mode)
        self.hold: asyncio.Event | None = None
        self._ids = 0

    async def _record(self, method: str, chat_id: int, text: str, parse_mode: Any) -> None:
        self.calls.append((self.clock.now, method, chat_id, text, parse_mode))
        if self.hold is not None:
            await self.hold.wait()

    async def send_message(self, chat_id: int, text: str, parse_mode: Any = None, **_: Any) -> SimpleNamespace:
        await self._record("send", chat_id, text, parse_mode)
        self._ids += 1
        return SimpleNamespace(message_id=self._ids)

    async def edit_message_text(self, text: str, *, chat_id: int, message_id: int, parse_mode: Any = None) -> bool:
        await self._record(f"edit {message_id}", chat_id, text, parse_mode)
        return True

    def of(self, chat_id: int) -> list[tuple[float, str, int, str, Any]]:
        return [call for call in self.calls if call[2] == chat_id]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(channel_module, "time", fake)
    return fake


@pytest.fixture
def bot(clock: Clock) -> RecordingBot:
    return RecordingBot(clock)


@pytest.fixture
def previews(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many previews the channel cut (one entry per call, the text's length)."""
    calls: list[int] = []
    real = channel_module.preview_text

    def counting(markdown: str) -> str:
        calls.append(len(markdown))
        return real(markdown)

    monkeypatch.setattr(channel_module, "preview_text", counting)
    return calls


async def stream(channel: TelegramChannel, clock: Clock, answer: str, *, chunk: int, every_s: float,
                 chat_id: int = 1) -> None:
    """Feed `answer` as core does: the text so far, one event per chunk, `every_s` apart."""
    for end in range(chunk, len(answer) + chunk, chunk):
        await channel.deliver(ReplyEvent(kind="draft", trace_id=TRACE, chat_id=chat_id, text=answer[:end]))
        await asyncio.sleep(0)  # the draft call in flight runs
        clock.now += every_s


async def final(channel: TelegramChannel, text: str, chat_id: int = 1) -> None:
    await channel.deliver(ReplyEvent(kind="final", trace_id=TRACE, chat_id=chat_id, text=text))


async def test_at_most_one_edit_per_interval_per_chat(clock, bot) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    started = clock.now
    answer = "word " * 400
    for end in range(5, len(answer) + 5, 5):  # two chats streaming at once, 50 ms per chunk
        for chat_id in (1, 2):
            await channel.deliver(ReplyEvent(kind="draft", trace_id=TRACE, chat_id=chat_id, text=answer[:end]))
        await asyncio.sleep(0)
        clock.now += 0.05
    for chat_id in (1, 2):
        times = [at for at, *_ in bot.of(chat_id)]
        assert times[0] == pytest.approx(started + FIRST_DRAFT_S, abs=0.051)  # first shown quickly
        gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
        assert gaps and min(gaps) >= EDIT_INTERVAL_S - 1e-9
        assert len(times) >= (clock.now - started - 1) // EDIT_INTERVAL_S  # and paced, not starved
        assert [method for _, method, *_ in bot.of(chat_id)][1:] == [f"edit {chat_id}"] * (len(times) - 1)


async def test_previews_are_bounded_by_the_edits_not_the_chunks(clock, bot, previews) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    answer = ("A sentence with **bold** and `code`.\n\n" * 200)[:8000]
    await stream(channel, clock, answer, chunk=4, every_s=0.01)  # 2,000 chunks over 20 s
    assert 10 <= len(bot.calls) <= 25
    assert len(previews) <= len(bot.calls)  # not 2,000


async def test_one_draft_call_in_flight(clock, bot) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    bot.hold = asyncio.Event()
    await stream(channel, clock, "slow Telegram " * 50, chunk=7, every_s=0.1)  # 10 s of chunks
    assert len(bot.calls) == 1  # the first send never answered: nothing else was started
    bot.hold.set()
    await asyncio.sleep(0)  # the held call returns
    await stream(channel, clock, "slow Telegram " * 51, chunk=len("slow Telegram " * 51), every_s=0.1)
    assert [text for *_, text, _ in bot.calls][-1] == "slow Telegram " * 51


async def test_unchanged_text_is_not_sent_again(clock, bot) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    for _ in range(10):
        await stream(channel, clock, "the same", chunk=8, every_s=2.0)
    assert len(bot.calls) == 1


async def test_the_final_answer_replaces_the_draft(clock, bot) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    await stream(channel, clock, "Here is **the answer", chunk=5, every_s=0.5)
    await final(channel, "Here is **the answer**.")
    assert [method for _, method, *_ in bot.calls] == ["send"] + ["edit 1"] * (len(bot.calls) - 1)
    assert bot.calls[-1][3:] == ("Here is <b>the answer</b>.", "HTML")
    assert all(parse_mode is None for *_, parse_mode in bot.calls[:-1])  # drafts are plain previews
    assert channel._drafts == {}  # noqa: SLF001 - the turn's draft state is gone


async def test_the_final_answer_waits_for_the_draft_in_flight(clock, bot) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    bot.hold = asyncio.Event()
    await stream(channel, clock, "Thinking", chunk=4, every_s=1.0)  # "Thinking" is due: its send is held
    assert [text for *_, text, _ in bot.calls] == ["Thinking"]
    finishing = asyncio.create_task(final(channel, "Thinking done."))
    await asyncio.sleep(0)
    assert len(bot.calls) == 1 and not finishing.done()  # the edit needs the draft's message id
    bot.hold.set()
    await finishing
    assert [method for _, method, *_ in bot.calls] == ["send", "edit 1"]


async def test_a_draft_past_the_limit_is_cut_once_and_the_final_continues(clock, bot, previews) -> None:
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    answer = "".join(f"Paragraph {n} 😀 has some words in it.\n\n" for n in range(400))  # about 15,000 units
    await stream(channel, clock, answer, chunk=40, every_s=0.1)
    drafts = [text for *_, text, _ in bot.calls]
    assert all(utf16_len(text) <= TELEGRAM_TEXT_LIMIT for text in drafts)
    assert drafts[-1].endswith(" …") and answer.startswith(drafts[-1].removesuffix(" …"))
    assert sum(text.endswith(" …") for text in drafts) == 1  # the cut preview cannot change: shown once
    assert len(previews) <= len(drafts)
    edits_before_final = len(bot.calls)
    await final(channel, answer)
    parts = bot.calls[edits_before_final:]
    assert parts[0][1] == "edit 1" and {method for _, method, *_ in parts[1:]} == {"send"}
    assert all(utf16_len(text) <= TELEGRAM_TEXT_LIMIT for *_, text, _ in parts)
    assert "".join(text for *_, text, _ in parts).replace("\n", "") == answer.replace("\n", "")
