"""Contracts end to end: malformed LLM output and updates the gateway does not handle.

The real bot process against the stand-ins: a broken answer from the model still ends in an
error reply with a `ref`, a DLQ entry, and a bot that answers the next message; updates it does
not handle are ignored on purpose (no reply, no crash) and the journal says so.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.harness import free_port, run_cli
from tests.fakes.llm_api import Malformed
from tests.fakes.telegram_api import post_json

pytestmark = pytest.mark.e2e
USER = 100
REF = "ref: "


def journal(bot) -> dict[int, tuple[str, str | None]]:  # noqa: ANN001 - the BotFactory fixture
    """update_id -> (state, error), read from the bot's own database while it runs."""
    return {row[0]: (row[1], row[2]) for row in bot.query("SELECT update_id, state, error FROM journal")}


def dlq_entries(bot) -> list[dict[str, Any]]:  # noqa: ANN001 - the BotFactory fixture
    listed = run_cli(bot.env(), "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def test_malformed_llm_answers_end_in_an_error_reply_a_dlq_entry_and_the_bot_goes_on(
        bot, fake_telegram, fake_llm) -> None:
    bot(RETRY_WAIT_SCALE="0")
    kinds = ["no_choices", "not_json"]  # tool arguments that are not JSON are answered: tests/e2e/test_tools.py
    for number, kind in enumerate(kinds):
        fake_llm.enqueue(Malformed(kind), Malformed(kind))  # malformed output is retried once
        before = len(fake_telegram.messages(USER))
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"question {number} ({kind})"))
        fake_telegram.wait_for(lambda before=before: len(fake_telegram.messages(USER)) > before
                               and REF in fake_telegram.messages(USER)[-1].text, timeout=20,
                               message=f"an error reply with a ref after {kind}")
        error = fake_telegram.messages(USER)[-1].text
        assert "broken answer" in error, error
        ref = error.split(REF, 1)[1].strip()[:8]
        assert len(ref) == 8 and all(c in "0123456789abcdef" for c in ref), error
        # The next message is answered: one broken answer does not stop the bot.
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"next {number}"))
        fake_telegram.wait_for_text(USER, f"echo: next {number}", timeout=20)
    assert fake_llm.pending() == 0  # each broken answer was tried exactly twice
    entries = dlq_entries(bot)
    assert sorted(e["text"] for e in entries) == sorted(f"question {n} ({k})" for n, k in enumerate(kinds))
    assert {e["error_kind"] for e in entries} == {"llm_malformed"}
    refs = [m.text.split(REF, 1)[1].strip()[:8] for m in fake_telegram.messages(USER) if REF in m.text]
    assert sorted(refs) == sorted(e["ref"] for e in entries)  # the ref the user saw finds the entry
    states = [state for state, _ in journal(bot).values()]
    assert states.count("failed") == len(kinds) and states.count("replied") == len(kinds)


# A poll as Bot API 10.0 sends it (PTB 22.8 refuses polls without these fields).
POLL = {"id": "p1", "question": "Lunch?", "total_voter_count": 0, "is_closed": False, "is_anonymous": True,
        "type": "regular", "allows_multiple_answers": False, "allows_revoting": False,
        "members_only": False,
        "options": [{"text": "yes", "voter_count": 0, "persistent_id": "o1"},
                    {"text": "no", "voter_count": 0, "persistent_id": "o2"}]}


def _message(fake_telegram, chat_id: int, user_id: int, text: str, **kwargs: Any) -> dict[str, Any]:  # noqa: ANN001
    return fake_telegram.text_update(chat_id, user_id, text, **kwargs)["message"]


def test_updates_the_gateway_does_not_handle_are_ignored_on_purpose(bot, fake_telegram, fake_llm) -> None:
    proc = bot()
    channel = -1001234
    edited = {**_message(fake_telegram, USER, USER, "first version"), "text": "edited version",
              "edit_date": int(time.time())}
    post = {"message_id": 1, "date": int(time.time()), "text": "channel news",
            "chat": {"id": channel, "type": "channel", "title": "News"}}
    member = {"chat": {"id": 101, "type": "private", "first_name": "Ann"},
              "from": {"id": 101, "is_bot": False, "first_name": "Ann"}, "date": int(time.time()),
              "old_chat_member": {"status": "kicked", "user": fake_telegram.bot_user, "until_date": 0},
              "new_chat_member": {"status": "member", "user": fake_telegram.bot_user}}
    ignored = {
        fake_telegram.push_update({"edited_message": edited}): "edited message",
        fake_telegram.push_update({"channel_post": post}): "channel post",
        fake_telegram.push_update({"edited_channel_post": {**post, "edit_date": int(time.time())}}): "channel post",
        fake_telegram.push_update({"my_chat_member": member}): "membership change",
    }
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "still there?"))
    fake_telegram.wait_for_text(USER, "echo: still there?", timeout=20)
    rows = fake_telegram.wait_for(lambda: (lambda j: j if all(j.get(u, ("",))[0] == "ignored" for u in ignored)
                                           else None)(journal(bot)), timeout=10,
                                  message="every unhandled update journaled as ignored")
    for update_id, reason in ignored.items():
        assert reason in (rows[update_id][1] or ""), (update_id, rows[update_id])
    assert [m.text for m in fake_telegram.messages(USER)] == ["echo: still there?"]
    assert fake_telegram.messages(channel) == [] and fake_telegram.messages(101) == []
    assert fake_llm.count() == 1 and proc.alive()
    assert "Traceback" not in proc.output()


def test_webhook_keeps_a_malformed_update_and_answers_the_next(bot, fake_telegram, fake_llm) -> None:
    port = free_port()
    bot(WEBHOOK_URL="https://bot.example.com/telegram", PORT=str(port))
    url, secret = f"http://127.0.0.1:{port}/telegram", fake_telegram.webhook["secret_token"]
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
    status, body = post_json(url, {"update_id": 9001, "message": "not an object"}, headers)
    assert status == 400 and "malformed update" in body
    status, body = post_json(url, {"update_id": True, "message": {}}, headers)
    assert status == 400 and "not a Telegram update" in body
    status, body = post_json(url, b"[" * 100_000 + b"]" * 100_000, headers)  # deeper than any parser likes
    assert status == 400
    state, error = journal(bot)[9001]
    assert state == "failed" and "malformed" in (error or "")
    status, _ = fake_telegram.deliver_webhook(fake_telegram.text_update(USER, USER, "hello", update_id=9002), port)
    assert status == 200
    fake_telegram.wait_for_text(USER, "echo: hello", timeout=20)
    assert fake_llm.count() == 1


def test_an_update_that_cannot_be_parsed_does_not_stall_polling(bot, fake_telegram, fake_llm) -> None:
    """PTB parses a getUpdates batch as a whole: one update it cannot read (here a poll from an older
    Bot API, without the option ids PTB now requires) would make it fetch the same batch forever."""
    proc = bot()
    poll = {key: value for key, value in _message(fake_telegram, USER, USER, "x").items() if key != "text"}
    poll["poll"] = {**POLL, "options": [{"text": "yes", "voter_count": 0}]}
    unreadable = fake_telegram.push_update({"message": poll})
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "after the bad one"))
    fake_telegram.wait_for_text(USER, "echo: after the bad one", timeout=20)
    state, error = journal(bot)[unreadable]
    assert state == "failed" and "malformed update" in (error or "")
    fake_telegram.wait_for(lambda: fake_telegram.pending_updates() == [], timeout=10)  # confirmed, not refetched
    assert len([uid for uid in fake_telegram.delivered_update_ids() if uid == unreadable]) == 1
    assert [m.text for m in fake_telegram.messages(USER)] == ["echo: after the bad one"] and proc.alive()
