"""The gateway end to end: the real `python -m bot` process against the local stand-ins."""

from __future__ import annotations

import pytest

from tests.e2e.harness import OPERATOR_ID
from tests.fakes.llm_api import Reply

pytestmark = pytest.mark.e2e
USER = 100


def test_private_chat_is_answered_with_streaming(bot, fake_telegram, fake_llm) -> None:
    proc = bot()
    text = "First part of the answer. " * 12 + "**bold end**"
    fake_llm.enqueue(Reply(text, chunk_chars=15, delay_s=0.12))
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
    commands = {c["command"] for c in fake_telegram.commands()}
    assert {"start", "help", "new"} <= commands and "dlq" not in commands
    assert proc.stop() == 0


def test_refused_user_gets_their_id_and_costs_nothing(bot, fake_telegram, fake_llm) -> None:
    bot()
    fake_telegram.push_update(fake_telegram.text_update(555, 555, "let me in"))
    fake_telegram.wait_for_text(555, "555")
    assert fake_llm.count() == 0
