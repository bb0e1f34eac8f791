"""CPU of the streaming-draft path: a long answer fed to the channel in small deltas.

    python -m bench.draft_path                  # 2,000 deltas of 4 characters (an 8,000-character answer)
    python -m bench.draft_path --chars 16000    # a longer answer, same delta size

Two figures, both process CPU time for the whole answer: `channel` is `TelegramChannel.deliver`
for every draft event (what bot/channel.py costs), `stream` adds what core does per delta before
that (each delta appended to the one streamed text the draft event holds; the text is joined only
when the channel reads it for a preview), as core/pipeline/llm.py does. The bot is a stand-in whose calls return at once. The pacing runs on the real
clock and the deltas come much faster than a model sends them, so hardly any edit falls due: the
figures are the per-chunk cost (tests/bot/test_drafts.py counts edits and previews on a simulated
clock). Each figure is the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from types import SimpleNamespace
from typing import Any

from bot.channel import TelegramChannel
from core.contracts import ReplyEvent, StreamedText

TRACE_ID = "0" * 31 + "1"


class _InstantBot:
    """Answers every call at once, counting them."""

    def __init__(self) -> None:
        self.calls = 0

    async def send_message(self, *_args: Any, **_kwargs: Any) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(message_id=1)

    async def edit_message_text(self, *_args: Any, **_kwargs: Any) -> bool:
        self.calls += 1
        return True


async def _with_core(deltas: list[str]) -> tuple[float, int]:
    """What core does per delta (core/pipeline/llm.py `draft_sink`: append to one StreamedText that
    one draft event holds by reference, deliver that event again), then `deliver`."""
    bot = _InstantBot()
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    started = time.process_time()
    streamed = StreamedText()
    event = ReplyEvent(kind="draft", trace_id=TRACE_ID, chat_id=1, streamed=streamed)
    for delta in deltas:
        streamed.append(delta)
        await channel.deliver(event)
        await asyncio.sleep(0)  # let a draft call in flight finish, as the event loop would
    return time.process_time() - started, bot.calls


async def _channel_only(deltas: list[str]) -> tuple[float, int]:
    """Only `deliver`: the events are built before the clock starts."""
    bot = _InstantBot()
    channel = TelegramChannel(bot)  # type: ignore[arg-type]
    texts, so_far = [], ""
    for delta in deltas:
        so_far += delta
        texts.append(so_far)
    events = [ReplyEvent(kind="draft", trace_id=TRACE_ID, chat_id=1, text=text) for text in texts]
    started = time.process_time()
    for event in events:
        await channel.deliver(event)
        await asyncio.sleep(0)
    return time.process_time() - started, bot.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=8000)
    parser.add_argument("--delta", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    answer = ("Some **bold** words, a `code span` and plain text.\n\n" * (args.chars // 40 + 1))[: args.chars]
    deltas = [answer[i : i + args.delta] for i in range(0, len(answer), args.delta)]
    for name, run in (("channel", lambda: _channel_only(deltas)),
                      ("stream", lambda: _with_core(deltas))):
        best = min((asyncio.run(run()) for _ in range(args.repeat)), key=lambda result: result[0])
        print(f"{name}: {best[0] * 1000:.1f} ms CPU for {len(deltas)} deltas "
              f"({args.chars} characters), {best[1]} Bot API calls")


if __name__ == "__main__":
    main()
