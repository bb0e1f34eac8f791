"""Failure economics end to end: the real `python -m bot` process against the stand-ins.

Each test scripts one way the world fails (the LLM answers 5xx, 429, 401 or is down long
enough to open the circuit; Telegram throttles, the operator's chat fails, a user blocks the
bot, the process is killed) and checks what the issue promises: at most one retry, a reply
with a ref, a dead-letter entry, one deduplicated alert in the operator's chat, and nothing lost.
Waits are scaled to zero (RETRY_WAIT_SCALE=0) except where a test measures a wait.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from config.settings import Settings
from core.contracts import DlqEntry, InboundMessage
from core.services import build_services
from tests.e2e.harness import (
    OPERATOR_ID,
    REPO_ROOT,
    BotProcess,
    bot_env,
    find_secret_lines,
    free_port,
    run_cli,
)
from tests.fakes.llm_api import Error, Reply
from tests.fakes.telegram_api import FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
REF = re.compile(r"ref: ([0-9a-f]{8})")
FAST = {"RETRY_WAIT_SCALE": "0"}


# Helpers ------------------------------------------------------------------------------
def dlq_entries(proc: BotProcess, status: str = "pending") -> list[dict]:
    """The dead-letter queue as the operator's CLI prints it (`python -m bot dlq list --json`)."""
    result = run_cli(proc.env, "dlq", "list", "--json", "--status", status)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def ref_in(text: str) -> str:
    found = REF.search(text)
    assert found, f"no 'ref: xxxxxxxx' in {text!r}"
    return found.group(1)


def sends_to(fake_telegram: FakeTelegram, chat_id: int, *, since: float = 0.0) -> list:
    """sendMessage attempts addressed to a chat (failed ones included), oldest first."""
    return [c for c in fake_telegram.calls("sendMessage") if c.params.get("chat_id") == chat_id and c.at >= since]


def wait_for_errors(fake_telegram: FakeTelegram, chat_id: int, count: int) -> list[str]:
    """Wait until a chat has `count` error replies (texts with a ref); returns them."""

    def errors() -> list[str]:
        found = [t for t in fake_telegram.sent_texts(chat_id) if "ref:" in t]
        return found if len(found) >= count else []

    return fake_telegram.wait_for(errors, 15, message=f"{count} error replies in chat {chat_id}")


def operator_alerts(fake_telegram: FakeTelegram, substring: str) -> list[str]:
    return [t for t in fake_telegram.sent_texts(OPERATOR_ID) if substring in t]


def say(fake_telegram: FakeTelegram, text: str, user: int = USER) -> None:
    fake_telegram.push_update(fake_telegram.text_update(user, user, text))


def ask_operator(fake_telegram: FakeTelegram, command: str, expect: str, timeout: float = 15) -> str:
    """Send a command in the operator's chat; the first new message there containing `expect`."""
    before = len(fake_telegram.messages(OPERATOR_ID))
    say(fake_telegram, command, user=OPERATOR_ID)

    def answer() -> str | None:
        return next((m.plain_text for m in fake_telegram.messages(OPERATOR_ID)[before:]
                     if m.plain_text and expect in m.plain_text), None)

    return fake_telegram.wait_for(answer, timeout, message=f"no answer to {command} containing {expect!r}")


def wait_for_late_answer(fake_telegram: FakeTelegram, chat_id: int, text: str, timeout: float = 20) -> str:
    """A replayed message's answer: the echo of `text`, saying that it comes late."""

    def late() -> str | None:
        return next((m.plain_text for m in fake_telegram.messages(chat_id) if m.plain_text
                     and f"echo: {text}" in m.plain_text and "Sorry for the delay" in m.plain_text), None)

    return fake_telegram.wait_for(late, timeout, message=f"no late answer to {text!r} in chat {chat_id} "
                                  f"(texts: {fake_telegram.sent_texts(chat_id)!r})")


# LLM failures -------------------------------------------------------------------------
def test_server_error_then_success_is_answered_after_one_retry(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_llm.enqueue(Error.server_error())
    say(fake_telegram, "are you up?")
    fake_telegram.wait_for_text(USER, "echo: are you up?", timeout=15)
    assert fake_llm.count() == 2
    assert not [t for t in fake_telegram.sent_texts(USER) if "ref:" in t]  # the retry hid the failure


def test_persistent_server_error_goes_to_dlq_alerts_and_replays(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    question = "what is the capital of France?"
    fake_llm.fail_all(Error.server_error())
    say(fake_telegram, question)
    error = fake_telegram.wait_for_text(USER, "ref:", timeout=15).plain_text
    ref = ref_in(error)
    assert fake_llm.count() == 2  # one retry, not more
    assert "I kept your message" in error
    alert = fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=15).plain_text
    listing = ask_operator(fake_telegram, "/dlq", f"ref: {ref}")
    entry_id = re.search(rf"#(\d+) llm_server chat {USER} .*ref: {ref}", listing).group(1)
    assert "llm_server" in alert and f"/replay {entry_id}" in alert
    entry = ask_operator(fake_telegram, f"/dlq {entry_id}", f"DLQ #{entry_id}")
    assert "[pending] llm_server" in entry and f"message: {question}" in entry
    assert entry.split("attempts:", 1)[1].count("llm_server") == 2  # both attempts, with their times

    fake_llm.clear_failures()
    ask_operator(fake_telegram, f"/replay {entry_id}", "answer delivered")
    wait_for_late_answer(fake_telegram, USER, question)
    assert fake_llm.count() == 3
    ask_operator(fake_telegram, f"/replay {entry_id}", "is not pending")  # idempotent
    ask_operator(fake_telegram, "/dlq", "queue is empty")
    assert fake_llm.count() == 3


def test_rate_limit_retry_waits_for_retry_after(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_llm.enqueue(Error.rate_limited(retry_after=2))
    say(fake_telegram, "busy?")
    fake_telegram.wait_for_text(USER, "echo: busy?", timeout=15)
    first, second = fake_llm.completions()
    assert second.at - first.at >= 2.0


def test_bad_key_is_not_retried_and_alerts_at_once_without_the_key(bot, fake_telegram, fake_llm) -> None:
    wrong_key = "sk-wrong-SECRET-key-9876543210"
    proc = bot(LLM_API_KEY=wrong_key, **FAST)  # the stand-in answers 401 to any other key
    say(fake_telegram, "hello")
    reply = fake_telegram.wait_for_text(USER, "ref:", timeout=15).plain_text
    assert "log in" in reply
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "LLM_API_KEY", timeout=10).plain_text
    assert "llm_auth" in alert and f"ref: {ref_in(reply)}" in alert
    assert fake_llm.count() == 1
    entry = ask_operator(fake_telegram, "/dlq 1", "DLQ #1")  # the stored error, as the operator sees it
    assert "[pending] llm_auth" in entry and "HTTP 401" in entry
    seen = [*fake_telegram.sent_texts(USER), *fake_telegram.sent_texts(OPERATOR_ID), entry, proc.output()]
    assert not [text for text in seen if wrong_key in text or wrong_key[3:] in text]


def test_outage_opens_the_circuit_once_and_recovers_with_late_answers(bot, fake_telegram, fake_llm) -> None:
    reset_s = 3.0
    bot(BREAKER_FAILURE_THRESHOLD=3, BREAKER_RESET_SECONDS=reset_s, **FAST)
    fake_llm.fail_all(Error.server_error())
    say(fake_telegram, "one")  # two failed requests
    wait_for_errors(fake_telegram, USER, 1)
    say(fake_telegram, "two", user=101)  # the third failure opens the circuit
    wait_for_errors(fake_telegram, 101, 1)
    assert fake_llm.count() == 3
    opened_at = fake_llm.completions()[-1].at
    for user, text, errors in ((102, "three", 1), (USER, "four", 2)):
        say(fake_telegram, text, user=user)
        assert "temporarily unavailable" in wait_for_errors(fake_telegram, user, errors)[-1]
    assert fake_llm.count() == 3  # failing fast: no request while the circuit is open
    fake_telegram.wait_for(lambda: operator_alerts(fake_telegram, "opened after"), timeout=10)

    cleared_at = time.monotonic()
    fake_llm.clear_failures()  # the provider is back: once the reset time passes, a probe closes the circuit
    for user, text in ((USER, "one"), (101, "two"), (102, "three"), (USER, "four")):
        wait_for_late_answer(fake_telegram, user, text)
    fake_telegram.wait_for(lambda: operator_alerts(fake_telegram, "Recovered"), timeout=10)
    assert all(r.at >= opened_at + reset_s - 0.05 for r in fake_llm.completions()[3:])
    answered = [r.messages[-1]["content"] for r in fake_llm.completions() if r.at >= cleared_at]
    assert sorted(answered) == ["four", "one", "three", "two"]  # each queued message answered once
    assert len(operator_alerts(fake_telegram, "opened after")) == 1  # not one per message
    assert len(operator_alerts(fake_telegram, "Recovered")) == 1


# Telegram failures --------------------------------------------------------------------
def test_flood_control_on_send_message_still_delivers(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_telegram.fail("sendMessage", 429, retry_after=1)
    say(fake_telegram, "slow down")
    fake_telegram.wait_for_text(USER, "echo: slow down", timeout=15)
    attempts = sends_to(fake_telegram, USER)
    assert len(attempts) >= 2 and attempts[1].at - attempts[0].at >= 1.0
    assert len(fake_telegram.messages(USER)) == 1


def test_alert_reaches_the_operator_once_their_chat_recovers(bot, fake_telegram, fake_llm) -> None:
    bot(**FAST)
    fake_telegram.fail("sendMessage", 502, times=3, chat_id=OPERATOR_ID)
    fake_llm.enqueue(Error.invalid_api_key())
    say(fake_telegram, "hi")
    ref = ref_in(fake_telegram.wait_for_text(USER, "ref:", timeout=15).text)
    fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=20)
    assert len(sends_to(fake_telegram, OPERATOR_ID)) >= 4
    assert len(operator_alerts(fake_telegram, f"ref: {ref}")) == 1


def test_dlq_and_outbox_survive_kill_9(bot, fake_telegram, fake_llm) -> None:
    first = bot(**FAST)
    fake_telegram.fail("sendMessage", 502, times=None, chat_id=OPERATOR_ID)  # the operator's chat is down
    fake_llm.enqueue(Error.invalid_api_key())
    say(fake_telegram, "keep me safe")
    ref = ref_in(fake_telegram.wait_for_text(USER, "ref:", timeout=15).text)  # sent after the DLQ write
    fake_telegram.wait_for(lambda: sends_to(fake_telegram, OPERATOR_ID), timeout=10)  # the alert is tried
    first.kill()

    second = bot(wait=False, **FAST)
    [entry] = dlq_entries(second)  # read from disk while the bot restarts
    second.wait_ready(fake_telegram)
    assert (entry["ref"], entry["status"], entry["error_kind"]) == (ref, "pending", "llm_auth")
    assert (entry["chat_id"], entry["user_id"], entry["text"]) == (USER, USER, "keep me safe")
    assert len(entry["attempts"]) == 1
    restarted_at = time.monotonic()
    fake_telegram.wait_for(lambda: sends_to(fake_telegram, OPERATOR_ID, since=restarted_at), timeout=10)
    fake_telegram.clear_faults()
    alert = fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=20).plain_text
    assert "llm_auth" in alert
    assert len(operator_alerts(fake_telegram, f"ref: {ref}")) == 1


def test_blocked_user_is_recorded_and_not_written_to_again(bot, fake_telegram, fake_llm) -> None:
    proc = bot(BREAKER_FAILURE_THRESHOLD=1, BREAKER_RESET_SECONDS=2, **FAST)
    # 101's message waits in the DLQ for the provider to come back ...
    fake_llm.fail_all(Error.server_error())
    say(fake_telegram, "answer me later", user=101)
    fake_telegram.wait_for_text(101, "ref:", timeout=15)
    # ... and meanwhile 101 blocks the bot (Telegram says so with a my_chat_member update).
    fake_telegram.block_chat(101)
    blocked_at = time.monotonic()
    fake_telegram.push_update(kicked_update(fake_telegram, 101))
    proc.wait_for_output("chat 101 blocked the bot", timeout=10)
    recorded_at = time.monotonic()
    # The provider recovers: 100's probe closes the circuit; 101's entry is not replayed to them.
    fake_llm.clear_failures()
    say(fake_telegram, "hello again")
    fake_telegram.wait_for_text(USER, "echo: hello again", timeout=20)
    fake_telegram.wait_for(lambda: operator_alerts(fake_telegram, "Recovered"), timeout=10)
    # 102 blocks the bot while their answer streams: recorded, no error reply, no DLQ, no alert.
    fake_llm.enqueue(Reply("a slow answer " * 20, chunk_chars=10, delay_s=0.1))
    say(fake_telegram, "tell me a story", user=102)
    fake_telegram.wait_for(lambda: fake_llm.last_request().messages[-1]["content"] == "tell me a story")
    fake_telegram.block_chat(102)
    proc.wait_for_output("chat 102 blocked the bot", timeout=15)
    say(fake_telegram, "still there?")  # the bot is alive and serves everyone else
    fake_telegram.wait_for_text(USER, "echo: still there?", timeout=15)

    assert sends_to(fake_telegram, 101, since=blocked_at) == []
    assert not [c for c in sends_to(fake_telegram, 102) if "ref:" in str(c.params.get("text"))]
    listing = ask_operator(fake_telegram, "/dlq", "pending:")  # kept for the operator, not replayed
    assert "1 pending:" in listing and "chat 101" in listing
    replays_for_101 = [r for r in fake_llm.completions()
                       if r.at >= recorded_at and r.messages[-1]["content"] == "answer me later"]
    assert replays_for_101 == []  # no spend on an answer nobody can receive
    assert not operator_alerts(fake_telegram, "internal") and proc.alive()


def kicked_update(fake_telegram: FakeTelegram, user: int) -> dict:
    """What Telegram sends when a user blocks the bot in their private chat."""
    chat = {"id": user, "type": "private", "first_name": "Test"}
    person = {"id": user, "is_bot": False, "first_name": "Test"}
    return {"my_chat_member": {
        "chat": chat, "from": person, "date": int(time.time()),
        "old_chat_member": {"user": fake_telegram.bot_user, "status": "member"},
        "new_chat_member": {"user": fake_telegram.bot_user, "status": "kicked", "until_date": 0},
    }}


# The console and the DLQ command line ---------------------------------------------------
def console(env: Mapping[str, str], *lines: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot console` with `lines` typed on stdin (then end of input)."""
    return subprocess.run([sys.executable, "-m", "bot", "console"], cwd=REPO_ROOT, env=bot_env(env),
                          input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                          timeout=60, check=False)


def telegram_calls_to(fake_telegram: FakeTelegram, chat_id: int) -> list:
    return [c for c in fake_telegram.calls() if str(c.params.get("chat_id")) == str(chat_id)]


def test_a_failed_console_turn_belongs_to_the_console(bot, fake_telegram, fake_llm) -> None:
    fake_llm.fail_all(Error.server_error())
    typed = console(bot.env(BREAKER_FAILURE_THRESHOLD=10, **FAST), "typed in the terminal", "and a second line")
    assert typed.returncode == 0 and typed.stdout.count("ref: ") == 2, typed.stdout + typed.stderr
    first = bot(**FAST)  # a Telegram message fails too: three outage entries, the console's first
    say(fake_telegram, "sent on telegram")
    wait_for_errors(fake_telegram, USER, 1)
    assert first.stop() == 0
    entries = sorted(dlq_entries(first), key=lambda e: e["id"])
    assert [(e["chat_id"], e["text"]) for e in entries] == [
        (0, "typed in the terminal"), (0, "and a second line"), (USER, "sent on telegram")]
    console_ids = [entries[0]["id"], entries[1]["id"]]

    fake_llm.clear_failures()
    second = bot(**FAST)  # DLQ_AUTO_REPLAY (the default) replays outage entries at start, oldest first ...
    wait_for_late_answer(fake_telegram, USER, "sent on telegram")  # ... so the console's were passed over
    assert telegram_calls_to(fake_telegram, 0) == []
    assert sorted(e["id"] for e in dlq_entries(second)) == console_ids
    assert "chat 0 (console)" in ask_operator(fake_telegram, "/dlq", "pending:")
    ask_operator(fake_telegram, f"/replay {console_ids[0]}", "is a console turn")
    ask_operator(fake_telegram, "/replay all", "Nothing pending")

    # Each is answered where it was typed: `dlq replay` prints it, and so does the console's /replay.
    replayed = run_cli(second.env, "dlq", "replay", str(console_ids[0]))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "echo: typed in the terminal" in replayed.stdout and "answer delivered" in replayed.stdout
    again = console(second.env, f"/replay {console_ids[1]}")
    assert "echo: and a second line" in again.stdout and "answer delivered" in again.stdout, again.stdout
    assert telegram_calls_to(fake_telegram, 0) == [] and dlq_entries(second) == []


def pending_telegram_entry(bot) -> int:  # noqa: ANN001 - the BotFactory fixture
    """A DLQ entry of a Telegram chat, written the way a failed turn writes it, in the bot's storage."""
    return asyncio.run(_add_pending_telegram_entry(bot.data_dir, bot.database_url))


async def _add_pending_telegram_entry(data_dir: Path, database_url: str | None) -> int:
    settings = Settings(_env_file=None, data_dir=data_dir, database_url=database_url)
    services = await build_services(settings, tracing=False)
    try:
        trace_id = "ab" * 16
        inbound = InboundMessage(update_id=7, trace_id=trace_id, chat_id=USER, chat_type="private", user_id=USER,
                                 text="answer me later", received_at=services.clock.now())
        entry = DlqEntry(trace_id=trace_id, chat_id=USER, user_id=USER, inbound=inbound, error_kind="llm_server",
                         error_message="HTTP 500", replayable=True)
        return await services.dlq.add(entry, attempts=[], now=services.clock.iso())
    finally:
        await services.close()


def assert_one_line_error(result: subprocess.CompletedProcess[str], expect: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expect in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert find_secret_lines(result.stdout + result.stderr) == []


def test_dlq_replay_with_the_bot_api_unreachable_is_one_line(bot) -> None:
    entry_id = pending_telegram_entry(bot)
    env = bot.env(TELEGRAM_API_BASE_URL=f"http://127.0.0.1:{free_port()}", **FAST)
    result = run_cli(env, "dlq", "replay", str(entry_id))
    assert_one_line_error(result, "is not reachable")
    assert "nothing was replayed" in result.stderr
    listing = run_cli(env, "dlq", "list", "--json")
    assert [json.loads(line)["status"] for line in listing.stdout.splitlines()] == ["pending"]


def test_dlq_replay_with_a_rejected_token_is_one_line_without_the_token(bot) -> None:
    entry_id = pending_telegram_entry(bot)
    other = FakeTelegram("987654321:another-bots-token").start()  # answers 401 to TEST_TOKEN
    try:
        result = run_cli(bot.env(TELEGRAM_API_BASE_URL=other.base_url, **FAST), "dlq", "replay", str(entry_id))
    finally:
        other.stop()
    assert_one_line_error(result, "rejected TELEGRAM_BOT_TOKEN")

