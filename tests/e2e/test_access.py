"""Access end to end: pairing codes approved from the operator's chat, /allow, /users, /deny, groups.

The real `python -m bot` process against the stand-ins; with OPERATOR_CHAT_ID set the policy is
pairing by default. The stranger's message never reaches the model; a press by anyone but the
operator changes nothing; decisions survive a restart and a revocation applies to the next message."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.harness import OPERATOR_ID
from tests.fakes.telegram_api import BotMessage, FakeTelegram

pytestmark = pytest.mark.e2e
STRANGER = 555
CODE = re.compile(r"pairing code is ([A-Z2-9]{4}-[A-Z2-9]{4})")


def say(fake_telegram: FakeTelegram, user: int, text: str, *, chat: int | None = None, chat_type: str = "private",
        first_name: str = "Eve") -> None:
    fake_telegram.push_update(fake_telegram.text_update(chat or user, user, text, chat_type=chat_type,
                                                        first_name=first_name, username="eve_t"))


def code_from(message: BotMessage) -> str:
    found = CODE.search(message.plain_text or "")
    assert found, message.plain_text
    return found.group(1)


def request_for(fake_telegram: FakeTelegram, needle: str) -> BotMessage:
    return fake_telegram.wait_for_text(OPERATOR_ID, needle, timeout=15)


def button_data(message: BotMessage) -> dict[str, str]:
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return {button["text"]: button["callback_data"] for row in rows for button in row}


def press(fake_telegram: FakeTelegram, message: BotMessage, user: int, data: str) -> dict:
    """Press a button as `user`; returns the answerCallbackQuery the bot made for it."""
    before = len(fake_telegram.callback_answers())
    fake_telegram.push_update(fake_telegram.callback_update(message.chat_id, message.message_id, user, data,
                                                            first_name="Olga"))
    return fake_telegram.wait_for(lambda: fake_telegram.callback_answers()[before], timeout=15,
                                  message="the press was answered")


def current(fake_telegram: FakeTelegram, message: BotMessage) -> BotMessage:
    return next(m for m in fake_telegram.messages(message.chat_id) if m.message_id == message.message_id)


def test_stranger_is_paired_by_the_approve_button_and_stays_approved_after_a_restart(
        bot, fake_telegram, fake_llm) -> None:
    first = bot()
    say(fake_telegram, STRANGER, "hello, may I?")
    offer = fake_telegram.wait_for_text(STRANGER, "pairing code is", timeout=15)
    code = code_from(offer)
    assert str(STRANGER) in offer.plain_text and "send it again" in offer.plain_text
    say(fake_telegram, STRANGER, "hello again")  # within the hour: the same code, not a new one
    fake_telegram.wait_for(lambda: len(fake_telegram.messages(STRANGER)) == 2)
    assert code_from(fake_telegram.messages(STRANGER)[1]) == code
    assert fake_llm.count() == 0  # a stranger's message never reaches the model

    request = request_for(fake_telegram, code)
    assert f"id {STRANGER}" in request.plain_text and "Eve" in request.plain_text and "@eve_t" in request.plain_text
    buttons = button_data(request)
    assert set(buttons) == {"Approve", "Deny"}
    assert len([t for t in fake_telegram.sent_texts(OPERATOR_ID) if code in t]) == 1  # one request per code

    refused = press(fake_telegram, request, STRANGER, buttons["Approve"])  # not the operator: nothing changes
    assert "Only the operator" in refused["text"]
    assert button_data(current(fake_telegram, request)) == buttons
    say(fake_telegram, STRANGER, "am I in?")
    fake_telegram.wait_for(lambda: len(fake_telegram.messages(STRANGER)) == 3)
    assert "pairing code" in fake_telegram.messages(STRANGER)[2].plain_text and fake_llm.count() == 0

    answer = press(fake_telegram, request, OPERATOR_ID, buttons["Approve"])
    assert "approved by Olga" in answer["text"]
    decided = fake_telegram.wait_for(lambda: (m := current(fake_telegram, request)).reply_markup is None and m)
    assert re.search(r"approved by Olga \(900\) at \d\d:\d\d UTC", decided.plain_text) and code in decided.plain_text
    fake_telegram.wait_for_text(STRANGER, "You're in: send your message again.", timeout=15)
    again = press(fake_telegram, decided, OPERATOR_ID, buttons["Approve"])  # a stale press: says so, idempotent
    assert "Already approved" in again["text"]
    assert first.stop() == 0

    bot()  # decisions are stored: still approved after a restart
    say(fake_telegram, STRANGER, "now a real question")
    fake_telegram.wait_for_text(STRANGER, "echo: now a real question", timeout=15)
    assert fake_llm.count() == 1


def test_allow_by_code_users_and_deny_revoking_at_once(bot, fake_telegram, fake_llm) -> None:
    bot()
    say(fake_telegram, STRANGER, "let me in")
    code = code_from(fake_telegram.wait_for_text(STRANGER, "pairing code is", timeout=15))
    say(fake_telegram, OPERATOR_ID, f"/allow {code.lower()}")
    fake_telegram.wait_for_text(OPERATOR_ID, f"({STRANGER}) approved by", timeout=15)
    fake_telegram.wait_for_text(STRANGER, "You're in", timeout=15)
    say(fake_telegram, STRANGER, "first question")
    fake_telegram.wait_for_text(STRANGER, "echo: first question", timeout=15)

    say(fake_telegram, 556, "me too")  # another stranger, still waiting: listed with their code
    other = code_from(fake_telegram.wait_for_text(556, "pairing code is", timeout=15))
    say(fake_telegram, OPERATOR_ID, "/users")
    listing = fake_telegram.wait_for_text(OPERATOR_ID, "Pending codes", timeout=15).plain_text
    assert re.search(rf"{STRANGER} Eve @eve_t user, by \S+ \(900\) at \d{{4}}-", listing), listing
    assert f"{other} 556" in listing and "Access policy: pairing" in listing

    say(fake_telegram, OPERATOR_ID, f"/deny {STRANGER}")
    fake_telegram.wait_for_text(OPERATOR_ID, "their next message is refused", timeout=15)
    calls = fake_llm.count()
    say(fake_telegram, STRANGER, "second question")
    fake_telegram.wait_for_text(STRANGER, "Sorry, this bot is private", timeout=15)
    time.sleep(0.5)
    assert fake_llm.count() == calls
    assert not [t for t in fake_telegram.sent_texts(STRANGER) if "echo: second question" in t]
    assert len([t for t in fake_telegram.sent_texts(STRANGER) if "pairing code" in t]) == 1  # denied: no new code


def test_a_group_is_approved_from_the_operator_chat(bot, fake_telegram, fake_llm) -> None:
    bot()
    group, other_group = -7000, -7001
    for chat in (group, other_group):
        fake_telegram.push_update({"my_chat_member": {
            "chat": {"id": chat, "type": "group", "title": f"Family {chat}"},
            "from": {"id": STRANGER, "is_bot": False, "first_name": "Eve"}, "date": int(time.time()),
            "old_chat_member": {"user": fake_telegram.bot_user, "status": "left"},
            "new_chat_member": {"user": fake_telegram.bot_user, "status": "member"}}})
    request = request_for(fake_telegram, f"Family {group} (id {group})")
    assert "by Eve (555)" in request.plain_text
    request_for(fake_telegram, f"Family {other_group}")
    answer = press(fake_telegram, request, OPERATOR_ID, button_data(request)["Approve"])
    assert "approved" in answer["text"]
    fake_telegram.wait_for_text(group, "This group is approved", timeout=15)

    say(fake_telegram, 557, "@gateway_test_bot hello from the family", chat=group, chat_type="group")
    fake_telegram.wait_for_text(group, "echo: hello from the family", timeout=15)
    say(fake_telegram, 557, "@gateway_test_bot anyone here?", chat=other_group, chat_type="group")
    notice = fake_telegram.wait_for_text(other_group, "not approved", timeout=15)
    assert "\n" not in notice.plain_text.strip()
    assert fake_llm.count() == 1
