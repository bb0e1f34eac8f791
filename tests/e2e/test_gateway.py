"""The gateway end to end: the real `python -m bot` process against the local stand-ins.

The command menu is tested in test_budgets.py, a crash mid-turn in test_crash.py (one copy each)."""

from __future__ import annotations

import pytest

from tests.e2e.journal import settled
from tests.fakes.llm_api import Hang, Reply

pytestmark = pytest.mark.e2e
USER = 100


def test_private_chat_is_answered_with_streaming(bot, fake_telegram, fake_llm) -> None:
    proc = bot()
    text = "First part of the answer. " * 12 + "**bold end**"
    # The model thinks for 1.5 s (typing… shows), then streams for about 2 s (drafts are edited).
    fake_llm.enqueue(Hang(1.5, then=Reply(text, chunk_chars=15, delay_s=0.12)))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "hello there"))
    final = fake_telegram.wait_for_text(USER, "bold end", timeout=20)
    messages = fake_telegram.messages(USER)
    assert len(messages) == 1, [m.text for m in messages]
    assert final.edit_count >= 1  # streamed: sent early, then edited
    assert "<b>bold end</b>" in final.text and final.parse_mode == "HTML"
    assert "typing" in fake_telegram.chat_actions(USER)
    request = fake_llm.last_request()
    assert request.body["stream"] is True
    assert request.messages[-1]["content"] == "hello there"
    assert "<hot_state>" in request.messages[0]["content"]
    assert proc.stop() == 0


def test_refused_user_gets_their_id_and_costs_nothing(bot, fake_telegram, fake_llm) -> None:
    bot(ACCESS_POLICY="allowlist")  # with an operator the default is pairing (tests/e2e/test_access.py)
    fake_telegram.push_update(fake_telegram.text_update(555, 555, "let me in"))
    refusal = fake_telegram.wait_for_text(555, "555").plain_text
    assert "ALLOWED_USER_IDS" in refusal and "pairing" not in refusal
    assert fake_llm.count() == 0
    assert not [t for t in fake_telegram.sent_texts(900) if "Access request" in t]


def test_long_answer_arrives_whole_and_in_order(bot, fake_telegram, fake_llm) -> None:
    bot()
    paragraphs = [f"Paragraph {i:03d}: " + ("lorem ipsum dolor sit amet " * 6).strip() for i in range(60)]
    answer = "\n\n".join(paragraphs)
    assert len(answer) > 10_000
    fake_llm.enqueue(Reply(answer, chunk_chars=500))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "write a lot"))
    fake_telegram.wait_for_text(USER, "Paragraph 059", timeout=20)
    texts = [m.plain_text for m in fake_telegram.messages(USER)]
    assert len(texts) >= 3 and all(len(t) <= 4096 for t in texts)
    joined = "".join(texts)
    positions = [joined.index(f"Paragraph {i:03d}") for i in range(60)]
    assert positions == sorted(positions)


def test_rejected_markup_falls_back_to_plain_text(bot, fake_telegram, fake_llm) -> None:
    bot()
    fake_llm.enqueue(Reply("Here is **important** text"))
    fake_telegram.reject_html(times=5)
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "format please"))
    message = fake_telegram.wait_for_text(USER, "important", timeout=15)
    fake_telegram.wait_for(lambda: fake_telegram.messages(USER)[-1].parse_mode is None
                           and "**important**" in fake_telegram.messages(USER)[-1].text)
    assert message.text


def test_group_answers_only_mentions_and_replies(bot, fake_telegram, fake_llm, data_dir) -> None:
    bot()
    group = -5000
    chatting = fake_telegram.push_update(fake_telegram.text_update(group, USER, "just chatting", chat_type="group"))
    fake_telegram.push_update(fake_telegram.text_update(group, USER, "@gateway_test_bot what is 2+2?",
                                                        chat_type="group"))
    fake_telegram.wait_for_text(group, "echo: what is 2+2?")
    fake_telegram.wait_for(lambda: settled(bot, [chatting]), message="the unaddressed message settled")
    assert fake_llm.count() == 1
    bot_message = fake_telegram.messages(group)[-1]
    fake_telegram.push_update(fake_telegram.text_update(group, USER, "and 3+3?", chat_type="group",
                                                        reply_to_message_id=bot_message.message_id))
    fake_telegram.wait_for_text(group, "echo: and 3+3?")
    assert fake_llm.count() == 2


def test_history_survives_restart_and_redelivery_is_answered_once(bot, fake_telegram, fake_llm) -> None:
    first = bot()
    update = fake_telegram.text_update(USER, USER, "my name is Ada")
    update_id = fake_telegram.push_update(update)
    fake_telegram.wait_for_text(USER, "echo: my name is Ada")
    assert first.stop() == 0
    bot()
    fake_telegram.push_update({**update, "update_id": update_id})  # Telegram redelivers
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "what is my name?"))
    fake_telegram.wait_for_text(USER, "echo: what is my name?")
    contents = [m["content"] for m in fake_llm.last_request().messages]
    assert "my name is Ada" in contents  # history came back from SQLite
    assert fake_llm.count() == 2  # the redelivered update was not answered again
    assert len([t for t in fake_telegram.sent_texts(USER) if "my name is Ada" in t]) == 1


def test_bot_api_sends_are_paced_at_the_configured_rate(bot, fake_telegram, fake_llm) -> None:
    """TELEGRAM_SENDS_PER_SECOND paces every Bot API call (PTB's AIORateLimiter): 8 answers at 2/s
    take at least 3 s however fast the bot is; nothing is dropped on the way."""
    users = list(range(200, 208))
    proc = bot(TELEGRAM_SENDS_PER_SECOND="2", ALLOWED_USER_IDS="*")
    fake_llm.set_default(lambda body: Reply("paced answer"))
    for user in users:
        fake_telegram.push_update(fake_telegram.text_update(user, user, "hi"))
    for user in users:
        fake_telegram.wait_for_text(user, "paced answer", timeout=30)
    sends = sorted(c.at for c in fake_telegram.calls("sendMessage") if c.params.get("chat_id") in users)
    assert len(sends) == len(users)
    assert sends[-1] - sends[0] >= 2.5, [round(t - sends[0], 2) for t in sends]
    assert proc.stop() == 0
