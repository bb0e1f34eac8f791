"""Budgets and status end to end: spend caps enforced before the call, /budget, /usage and
/status showing what the usage records imply, and the command menu, through the real process.

Time is moved with GATEWAY_CLOCK_OFFSET_FILE (core/clock.py): every test first pins the bot's
clock to today's 12:00 UTC, so no test depends on when it runs (a real midnight or month end
falling inside a test cannot split its turns across periods).
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.usage import days_back
from tests.e2e.harness import OPERATOR_ID, REPO_ROOT, BotFactory
from tests.e2e.journal import settled
from tests.fakes.llm_api import Error, Reply, ToolCalls
from tests.fakes.telegram_api import BotMessage, FakeTelegram

pytestmark = pytest.mark.e2e
USER = 100
PROMPT_TOKENS, COMPLETION_TOKENS = 1000, 200  # what the LLM stand-in reports for every answer
TURN_TOKENS = PROMPT_TOKENS + COMPLETION_TOKENS
CLOCK_REREAD_S = 1.0  # core/clock.py re-reads the offset file at most this often
DAY_S = 86_400
PHONE_SCREEN_LINES = 15
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _price(model: str = "gpt-4o-mini") -> tuple[float, float]:
    """(input, output) USD per million tokens, read from the shipped price table."""
    entry = json.loads((REPO_ROOT / "config" / "prices.json").read_text())["models"][model]
    return entry["input_per_mtok"], entry["output_per_mtok"]


def _usd(amount: float) -> str:
    """How replies show dollars (4 decimals under $1), written out here independently."""
    if amount < 0.0001:
        return "<$0.0001" if amount > 0 else "$0.00"
    return f"${amount:.4f}" if amount < 1 else f"${amount:,.2f}"


def turn_cost_usd(prompt_tokens: int = PROMPT_TOKENS, completion_tokens: int = COMPLETION_TOKENS) -> float:
    input_per_mtok, output_per_mtok = _price()
    return (prompt_tokens * input_per_mtok + completion_tokens * output_per_mtok) / 1_000_000


def reported_usage(body: dict) -> Reply:
    """Echo the last user message, reporting PROMPT_TOKENS / COMPLETION_TOKENS of usage."""
    last = next(m for m in reversed(body["messages"]) if m["role"] == "user")
    return Reply(f"echo: {last['content']}", usage=(PROMPT_TOKENS, COMPLETION_TOKENS))


class BotClock:
    """The bot's clock, as an offset from the wall clock written to GATEWAY_CLOCK_OFFSET_FILE."""

    def __init__(self, path: Path) -> None:
        self.path = path
        now = datetime.now(UTC)
        self.offset_s = (now.replace(hour=12, minute=0, second=0, microsecond=0) - now).total_seconds()
        self.path.write_text(f"{self.offset_s}")

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds
        self.path.write_text(f"{self.offset_s}")
        # The bot re-reads the file at most once a second: after that long, every reading of
        # its clock sees the new offset. Nothing observable changes before, so this is a wait.
        time.sleep(CLOCK_REREAD_S + 0.05)


@pytest.fixture
def clock(tmp_path: Path) -> BotClock:
    return BotClock(tmp_path / "clock-offset")


def new_message(fake: FakeTelegram, chat: int, since: set[int], marker: str, timeout: float = 15) -> BotMessage:
    """Wait for a bot message in `chat` that is not in `since` and contains `marker`."""
    def find() -> BotMessage | None:
        return next((m for m in fake.messages(chat) if m.message_id not in since
                     and marker in (m.plain_text or m.text or m.caption or "")), None)

    return fake.wait_for(find, timeout, message=f"no new message with {marker!r} in chat {chat}: "
                                                f"{fake.sent_texts(chat)!r}")


@pytest.fixture
def say(fake_telegram: FakeTelegram, bot: BotFactory) -> Callable[[int, str, str], str]:
    """say(chat, text, marker): send `text` as the chat's own user, wait for the new reply that
    contains `marker` and for the turn to finish; returns the reply as the user sees it."""
    def send(chat: int, text: str, marker: str) -> str:
        since = {m.message_id for m in fake_telegram.messages(chat)}
        update_id = fake_telegram.push_update(fake_telegram.text_update(chat, chat, text))
        message = new_message(fake_telegram, chat, since, marker)
        fake_telegram.wait_for(lambda: settled(bot, [update_id]), message=f"update {update_id} not finished")
        final = next(m for m in fake_telegram.messages(chat) if m.message_id == message.message_id)
        return final.plain_text or final.text or ""

    return send


def texts_with(fake: FakeTelegram, chat: int, marker: str) -> list[str]:
    return [t for t in fake.sent_texts(chat) if marker in t]


def usage_rows(bot: BotFactory) -> list[dict]:
    return bot.records("SELECT * FROM usage ORDER BY id")


# Daily budget ---------------------------------------------------------------------------
# With answers reserved at 1,000 tokens a turn is estimated at ~1,600 tokens (a ~600-token
# prompt + 1,000) and costs 1,200 as reported. Projections: turn 2 ~2,800 (under 80% of 4,500 =
# 3,600), turn 3 ~4,000 (past 80%: warned, but under the cap), turn 4 ~5,200 (over: refused).
DAILY_CAP = 4500
MAX_OUTPUT = 1000


def test_daily_budget_refuses_before_the_call_resets_at_utc_midnight_and_spares_the_operator(
        bot, fake_telegram, fake_llm, clock, say) -> None:
    fake_llm.set_default(reported_usage)
    bot(USER_DAILY_TOKEN_BUDGET=DAILY_CAP, LLM_MAX_OUTPUT_TOKENS=MAX_OUTPUT,
        GATEWAY_CLOCK_OFFSET_FILE=clock.path)
    for number in (1, 2, 3):
        say(USER, f"question {number}", f"echo: question {number}")
    assert fake_llm.count() == 3
    warnings = texts_with(fake_telegram, USER, "Heads-up")
    assert len(warnings) == 1 and f"of your daily budget of {DAILY_CAP:,} tokens" in warnings[0]

    refusal = say(USER, "question 4", "daily budget of")
    assert f"Your daily budget of {DAILY_CAP:,} tokens would be exceeded by this request" in refusal
    assert f"({DAILY_CAP - 3 * TURN_TOKENS:,} left today)" in refusal
    assert "It resets at 00:00 UTC (in 12 h" in refusal and "ref: " in refusal
    assert fake_llm.count() == 3  # refused before any LLM request
    budget = say(USER, "/budget", "Today:")
    assert f"Today: {3 * TURN_TOKENS:,} of {DAILY_CAP:,} tokens used, {_usd(3 * turn_cost_usd())}" in budget

    # The operator is never capped by the per-user budget: 6,000 tokens, no warning, no refusal.
    for number in range(1, 6):
        say(OPERATOR_ID, f"op question {number}", f"echo: op question {number}")
    assert fake_llm.count() == 8
    assert not texts_with(fake_telegram, OPERATOR_ID, "Heads-up")
    assert not texts_with(fake_telegram, OPERATOR_ID, "daily budget of")

    clock.advance(DAY_S)  # the next UTC day
    say(USER, "question 5", "echo: question 5")
    assert fake_llm.count() == 9
    assert len(texts_with(fake_telegram, USER, "Heads-up")) == 1  # still warned only once
    budget = say(USER, "/budget", f"Today: {TURN_TOKENS:,} of {DAILY_CAP:,} tokens used")
    same_month = clock.now().day > 1
    assert f"This month: {(4 if same_month else 1) * TURN_TOKENS:,} tokens" in budget


# Monthly budget -------------------------------------------------------------------------
# A turn costs $0.00027 as reported and is estimated at ~$0.00015 (a ~600-token prompt plus a
# 100-token answer): turn 3 is projected at ~$0.00069 (under 80% of $0.0011), turn 4 at ~$0.00096
# (past 80%: the operator is warned, but under the cap), turn 5 at ~$0.00123 (over: refused).
MONTHLY_CAP_USD = 0.0011


def test_monthly_budget_refuses_before_the_call_and_warns_the_operator_once(bot, fake_telegram, fake_llm,
                                                                             clock, say) -> None:
    fake_llm.set_default(reported_usage)
    bot(MONTHLY_BUDGET_USD=MONTHLY_CAP_USD, USER_DAILY_TOKEN_BUDGET=0, LLM_MAX_OUTPUT_TOKENS=100,
        GATEWAY_CLOCK_OFFSET_FILE=clock.path)
    for number in (1, 2, 3):
        say(USER, f"question {number}", f"echo: question {number}")
    assert not texts_with(fake_telegram, OPERATOR_ID, "monthly budget")
    say(USER, "question 4", "echo: question 4")
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "of its monthly budget of $0.0011").plain_text or ""
    assert "[WARNING]" in alert and "MONTHLY_BUDGET_USD" in alert

    refusal = say(USER, "question 5", "monthly budget")
    assert "This bot's monthly budget of $0.0011 would be exceeded by this request" in refusal
    assert f"({_usd(MONTHLY_CAP_USD - 4 * turn_cost_usd())} left this month)" in refusal
    first_of_next_month = (clock.now().replace(day=28) + timedelta(days=4)).replace(day=1)
    assert f"It resets on {first_of_next_month.date().isoformat()} at 00:00 UTC" in refusal
    refused_operator = say(OPERATOR_ID, "operator question", "would be exceeded")
    assert "monthly budget of $0.0011" in refused_operator  # the monthly cap binds the operator too
    assert fake_llm.count() == 4
    assert len(texts_with(fake_telegram, OPERATOR_ID, "of its monthly budget")) == 1

    budget = say(OPERATOR_ID, "/budget", "This month:")
    assert f"This month: {_usd(4 * turn_cost_usd())} of $0.0011" in budget


# /status, /budget, /usage ---------------------------------------------------------------
def test_status_budget_and_usage_show_what_the_usage_records_imply(bot, fake_telegram, fake_llm, data_dir,
                                                                   clock, say) -> None:
    # No auto-replay: the failed turn stays in the DLQ, so the numbers below stay put.
    bot(MONTHLY_BUDGET_USD=5, RETRY_WAIT_SCALE=0, DLQ_AUTO_REPLAY="false", GATEWAY_CLOCK_OFFSET_FILE=clock.path)
    fake_llm.enqueue(Reply("answer one", usage=(PROMPT_TOKENS, COMPLETION_TOKENS)),
                     Reply("answer two", usage=(PROMPT_TOKENS, COMPLETION_TOKENS)))
    say(USER, "first", "answer one")
    say(USER, "second", "answer two")
    # A turn that spends one tool round, then fails twice (the retry included): all three
    # attempts are wasted spend, and only the tool round cost anything.
    fake_llm.enqueue(ToolCalls([("call_1", "update_hot_state", '{"set_objective": "test budgets"}')],
                               usage=(PROMPT_TOKENS, COMPLETION_TOKENS)),
                     Error.server_error(), Error.server_error())
    failure = say(USER, "third", "ref: ")
    ref = failure.rsplit("ref: ", 1)[1].strip()[:8]
    assert fake_llm.count() == 5

    rows = usage_rows(bot)
    assert len(rows) == 5 and sum(r["wasted"] for r in rows) == 3
    tokens, cost = 3 * TURN_TOKENS, 3 * turn_cost_usd()
    assert sum(r["total_tokens"] for r in rows) == tokens
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(cost)

    started = time.monotonic()
    budget = say(OPERATOR_ID, "/budget", "This month:")
    assert f"This month: {_usd(cost)} of $5.00 (0%, $5.00 left)." in budget
    assert f"Tokens: {tokens:,} in 5 attempts." in budget  # all reported: none estimated
    assert f"Today: {tokens:,} tokens, {_usd(cost)}." in budget
    assert f"Wasted on failed attempts: {TURN_TOKENS:,} tokens, {_usd(turn_cost_usd())} (3 attempts)." in budget
    assert f"Top users this month:\n  {USER}: {tokens:,} tok, {_usd(cost)}" in budget
    if HAS_MATPLOTLIB:  # the chart is optional: without matplotlib the text comes alone
        chart = fake_telegram.wait_for(lambda: fake_telegram.documents(OPERATOR_ID, kind="photo"))
        assert chart[0].data.startswith(b"\x89PNG") and time.monotonic() - started < 10

    mine = say(USER, "/budget", "Today:")
    assert f"Today: {tokens:,} of 200,000 tokens used, {_usd(cost)} ({200_000 - tokens:,} left)." in mine
    assert f"This month: {tokens:,} tokens, {_usd(cost)}." in mine
    assert not fake_telegram.documents(USER, kind="photo")  # the chart is the operator's

    usage = say(USER, "/usage", "last 7 days")
    days = days_back(clock.now(), 7)
    lines = [line.split() for line in usage.splitlines() if line[:4].isdigit()]
    assert [line[0] for line in lines] == days
    assert lines[-1] == [days[-1], f"{tokens:,}", _usd(cost)]
    assert all(line[1:] == ["0", "$0.00"] for line in lines[:-1])

    status = say(USER, "/status", "Gateway")
    assert len(status.splitlines()) <= PHONE_SCREEN_LINES, status
    for expected in ("Gateway 0.1.0, up ", "polling", "Model: gpt-4o-mini @ 127.0.0.1", "Circuit: closed",
                     "LLM 24h: 5 calls, p50 ", " ms, p95 ", "failures 40%", "Hot state: ", " / 1000 tokens",
                     "Last prompt: ", f"Last error: llm_server (ref: {ref})"):
        assert expected in status, (expected, status)
    assert fake_llm.count() == 5  # the commands cost nothing
    assert re.search(r"^Tokens: \w+_base", status, re.M) and re.search(r"^DLQ: 1 pending, outbox: \d+ pending",
                                                                      status, re.M), status
    operator_status = say(OPERATOR_ID, "/status", "Gateway")
    assert len(operator_status.splitlines()) <= PHONE_SCREEN_LINES, operator_status
    assert f"Last error: llm_server (ref: {ref})" in operator_status


def test_usage_the_provider_omits_is_estimated_marked_and_counted(bot, fake_telegram, fake_llm, data_dir,
                                                                  clock, say) -> None:
    bot(GATEWAY_CLOCK_OFFSET_FILE=clock.path)
    fake_llm.enqueue(Reply("an answer without usage", usage="omit"))
    say(USER, "count me", "an answer without usage")
    [row] = usage_rows(bot)
    assert row["estimated"] == 1 and row["wasted"] == 0
    assert row["input_tokens"] > 100 and 0 < row["output_tokens"] < 20  # the prompt and a short answer
    assert row["cost_usd"] == pytest.approx(turn_cost_usd(row["input_tokens"], row["output_tokens"]))
    mine = say(USER, "/budget", "Today:")
    assert f"Today: {row['total_tokens']:,} of 200,000 tokens used" in mine
    report = say(OPERATOR_ID, "/budget", "This month:")
    assert f"Tokens: {row['total_tokens']:,} in 1 attempt (1 estimated)." in report


# The command menu -----------------------------------------------------------------------
OPERATOR_ONLY = {"trace", "dlq", "replay", "discard"}


def test_menu_registers_operator_commands_only_in_the_operators_chat(bot, fake_telegram, say) -> None:
    bot()
    scope = {"type": "chat", "chat_id": OPERATOR_ID}
    # Readiness is the first setMyCommands; the operator's scope is registered right after it.
    operator = {c["command"] for c in fake_telegram.wait_for(lambda: fake_telegram.commands(scope))}
    everyone = {c["command"] for c in fake_telegram.commands()}
    assert {"start", "help", "budget", "usage", "status"} <= everyone
    assert not everyone & OPERATOR_ONLY
    assert everyone | OPERATOR_ONLY <= operator
    assert fake_telegram.commands({"type": "chat", "chat_id": USER}) == []
    assert "for the operator only" in say(USER, "/dlq", "operator")
