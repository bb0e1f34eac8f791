"""The Telegram channel end to end (the real `python -m bot` against the stand-ins): a Bot API that
answers 200 with a body the client cannot read, and a reply that waits in the outbox."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import BotProcess, run_cli
from tests.fakes.llm_api import Reply
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
FAST = {"RETRY_WAIT_SCALE": "0"}


def say(fake_telegram: FakeTelegram, text: str) -> None:
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))


def pending_dlq(proc: BotProcess) -> list[dict]:
    result = run_cli(proc.env, "dlq", "list", "--json", "--status", "pending")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_answers_telegram_took_but_the_client_could_not_read_count_as_delivered(bot, fake_telegram,
                                                                                fake_llm) -> None:
    proc = bot(**FAST)
    # 1. A short answer: its sendMessage is answered 200 without "date" (PTB cannot build the Message).
    fake_telegram.garble("sendMessage", drop=("date",), chat_id=USER)
    say(fake_telegram, "first")
    fake_telegram.wait_for_text(USER, "echo: first", timeout=15)
    # 2. A streamed answer: the draft is sent, the final edit of it is answered 200 with a non-JSON body.
    fake_llm.enqueue(Reply("a streamed **answer** " * 12, chunk_chars=12, delay_s=0.1))
    fake_telegram.garble("editMessageText", body="<html>gateway says ok</html>", times=50, chat_id=USER)
    say(fake_telegram, "second")
    fake_telegram.wait_for(lambda: any("<b>answer</b>" in (m.text or "") for m in fake_telegram.messages(USER)),
                           15, message="the streamed answer's final edit")
    # 3. A later message still goes through, in order: the turns above ended, nothing is retried.
    say(fake_telegram, "third")
    fake_telegram.wait_for_text(USER, "echo: third", timeout=15)
    texts = fake_telegram.sent_texts(USER)
    assert len(texts) == 3 and texts[0] == "echo: first" and texts[2] == "echo: third", texts
    assert pending_dlq(proc) == []
    assert "Task exception was never retrieved" not in proc.output()
    assert "could not be read" in proc.output()  # logged, as a warning, not hidden
    assert sum(1 for c in fake_telegram.calls("sendMessage") if c.params.get("chat_id") == USER) == 3


def test_a_kept_reply_is_delivered_later_with_its_formatting(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_telegram.fail("sendMessage", 500, chat_id=USER)  # the answer's first send is refused
    fake_llm.enqueue(Reply("Paris is the **capital** of France."))
    say(fake_telegram, "capital?")
    message = fake_telegram.wait_for_text(USER, "capital of France", timeout=15)
    assert message.parse_mode == "HTML"
    assert message.text == "Paris is the <b>capital</b> of France."
    assert message.plain_text == "Paris is the capital of France."
    sends = [c for c in fake_telegram.calls("sendMessage") if c.params.get("chat_id") == USER]
    assert len(sends) == 2 and all(c.params.get("parse_mode") == "HTML" for c in sends)
