"""The Telegram channel and a streamed answer held by reference (core's StreamedText): the answer
is joined only when an edit is due, so joins are bounded by the previews, not by the chunks."""

from __future__ import annotations

import asyncio

from bot.channel import TelegramChannel
from core.contracts import ReplyEvent, StreamedText
from tests.bot.test_drafts import TRACE, Clock, RecordingBot, bot, clock, previews  # noqa: F401 - fixtures


async def test_a_streamed_answer_is_joined_once_per_preview(clock: Clock, bot: RecordingBot,  # noqa: F811
                                                            previews: list[int]) -> None:  # noqa: F811
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    answer = ("A sentence with **bold** and `code`.\n\n" * 200)[:8000]
    streamed = StreamedText()
    event = ReplyEvent(kind="draft", trace_id=TRACE, chat_id=1, streamed=streamed)
    for start in range(0, len(answer), 4):  # 2,000 chunks over 20 s, as the LLM stage delivers them
        streamed.append(answer[start:start + 4])
        await channel.deliver(event)
        await asyncio.sleep(0)
        clock.now += 0.01
    assert 10 <= len(bot.calls) <= 25
    assert 0 < streamed.joins <= len(previews) <= len(bot.calls)  # not 2,000
    assert [text for *_, text, _ in bot.calls][0] == answer[:len(bot.calls[0][3])]  # a prefix of the answer
    drafted = len(bot.calls)
    await channel.deliver(ReplyEvent(kind="final", trace_id=TRACE, chat_id=1, text=answer))
    assert bot.calls[drafted][1] == "edit 1"  # the final answer's first part replaced the draft
