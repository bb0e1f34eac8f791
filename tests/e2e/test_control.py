"""Controlling an answer: /stop cuts a streamed answer (shown, kept, accounted, no DLQ entry),
/retry answers the last message again in place of the last answer."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import BotFactory, run_cli
from tests.fakes.llm_api import Reply
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
STORY = " ".join(f"word{n:04d}" for n in range(400))  # 3,600 characters: 360 chunks, 36 s at this pace


def rows(bot: BotFactory, sql: str, *params: object) -> list[dict]:
    return bot.records(sql, params)


def history(bot: BotFactory) -> list[tuple[str, str]]:
    return [(r["role"], r["content"]) for r in rows(bot, "SELECT role, content FROM messages WHERE chat_id = ?"
                                                     " AND archived = 0 ORDER BY id", USER)]


def dlq_depth(bot) -> int:  # noqa: ANN001 - the BotFactory fixture
    listed = run_cli(bot.env(), "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return len([line for line in listed.stdout.splitlines() if line.strip()])


def send(fake_telegram: FakeTelegram, text: str) -> None:
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))


def test_stop_cuts_a_long_streamed_answer_keeps_it_and_accounts_it(bot, fake_telegram, fake_llm) -> None:
    bot(LLM_TIMEOUT_SECONDS="60")
    send(fake_telegram, "/stop")  # nothing running yet
    fake_telegram.wait_for_text(USER, "Nothing to stop", timeout=20)

    fake_llm.enqueue(Reply(STORY, chunk_chars=10, delay_s=0.1))
    send(fake_telegram, "tell me a long story")
    fake_telegram.wait_for_text(USER, "word0005", timeout=20)  # the draft is growing
    send(fake_telegram, "/stop")
    stopped_at = time.monotonic()
    shown = fake_telegram.wait_for_text(USER, "(stopped)", timeout=15)
    assert time.monotonic() - stopped_at < 10  # not the 36 s the whole answer would take
    partial = shown.plain_text.removesuffix("(stopped)").strip()
    assert STORY.startswith(partial) and "word0005" in partial and len(partial) < len(STORY)
    # The request was cancelled: the bot closed the stream, the provider never finished it.
    fake_telegram.wait_for(lambda: fake_llm.aborted_streams() == 1, timeout=10)
    assert fake_llm.count() == 1

    # The tokens are accounted (estimated: the provider sends usage only at a stream's end), not as waste.
    [usage] = fake_telegram.wait_for(lambda: rows(bot, "SELECT * FROM usage WHERE chat_id = ?", USER),
                                     timeout=10)
    assert usage["estimated"] == 1 and usage["wasted"] == 0 and usage["model"] == "gpt-4o-mini"
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] < len(STORY) // 4
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # The history keeps the partial answer, marked; nothing is a dead letter; the journal says replied.
    user_turn, answer = history(bot)
    assert user_turn == ("user", "tell me a long story")
    assert answer[0] == "assistant" and answer[1].startswith(partial[:200]) and answer[1].endswith("(stopped)")
    assert dlq_depth(bot) == 0
    assert not [t for t in fake_telegram.sent_texts(USER) if "ref:" in t]

    # The next message sees the partial answer in its prompt, and the chat goes on as usual.
    send(fake_telegram, "thanks")
    fake_telegram.wait_for_text(USER, "echo: thanks", timeout=20)
    roles = [(m["role"], m["content"][:20]) for m in fake_llm.last_request().messages if m["role"] != "system"]
    assert roles[-3:] == [("user", "tell me a long story"), ("assistant", STORY[:20]), ("user", "thanks")]


def test_retry_answers_the_last_message_again_in_place_of_the_last_answer(bot, fake_telegram, fake_llm) -> None:
    bot()
    send(fake_telegram, "/retry")
    fake_telegram.wait_for_text(USER, "Nothing to retry", timeout=20)
    assert fake_llm.count() == 0

    fake_llm.enqueue(Reply("Two plus two is five."), Reply("Two plus two is four."))
    send(fake_telegram, "what is two plus two?")
    fake_telegram.wait_for_text(USER, "is five.", timeout=20)
    send(fake_telegram, "/retry")
    fake_telegram.wait_for_text(USER, "is four.", timeout=20)

    # The model was asked the same message again, without the answer it replaces.
    asked = [(m["role"], m["content"]) for m in fake_llm.last_request().messages if m["role"] != "system"]
    assert asked == [("user", "what is two plus two?")]
    # The old pair is deleted once the new turn has finished, which is just after its answer is
    # sent: wait for the turn to settle rather than read the table at the moment the text arrives.
    expected = [("user", "what is two plus two?"), ("assistant", "Two plus two is four.")]
    deadline = time.monotonic() + 20
    def settled() -> bool:
        return (history(bot) == expected
                and len(rows(bot, "SELECT id FROM messages WHERE chat_id = ?", USER)) == 2)

    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert history(bot) == expected
    assert len(rows(bot, "SELECT id FROM messages WHERE chat_id = ?", USER)) == 2  # the old pair is gone
    assert dlq_depth(bot) == 0
