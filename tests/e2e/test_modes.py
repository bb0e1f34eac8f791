"""Run modes and the command line: webhook, SIGTERM, console, doctor, basic commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from tests.e2e.harness import REPO_ROOT, TEST_LLM_KEY, TEST_TOKEN, bot_env, free_port, run_cli
from tests.fakes.llm_api import Reply
from tests.fakes.telegram_api import post_json

pytestmark = pytest.mark.e2e
USER = 100


def test_webhook_mode_checks_secret_and_body(bot, fake_telegram, fake_llm) -> None:
    port = free_port()
    bot(WEBHOOK_URL="https://bot.example.com/telegram", PORT=str(port))
    hook = fake_telegram.webhook
    assert hook["url"] == "https://bot.example.com/telegram" and hook["secret_token"]
    assert fake_telegram.calls("getUpdates") == []
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    update = fake_telegram.text_update(USER, USER, "via webhook", update_id=4242)
    status, _ = fake_telegram.deliver_webhook(update, port, secret="wrong-secret")
    assert status == 403
    status, _ = post_json(f"http://127.0.0.1:{port}/telegram", b"{not json",
                          {"X-Telegram-Bot-Api-Secret-Token": hook["secret_token"]})
    assert status == 400
    status, _ = post_json(f"http://127.0.0.1:{port}/telegram", {"hello": "world"},
                          {"X-Telegram-Bot-Api-Secret-Token": hook["secret_token"]})
    assert status == 400
    assert fake_llm.count() == 0
    status, _ = fake_telegram.deliver_webhook(update, port)
    assert status == 200
    fake_telegram.wait_for_text(USER, "echo: via webhook")
    status, _ = fake_telegram.deliver_webhook(update, port)  # redelivered: acknowledged, not answered again
    assert status == 200
    # A later update in the same chat, answered: the redelivery had its chance to be answered before it.
    status, _ = fake_telegram.deliver_webhook(fake_telegram.text_update(USER, USER, "marker", update_id=4243), port)
    assert status == 200
    fake_telegram.wait_for_text(USER, "echo: marker")
    assert fake_llm.count() == 2
    assert [t for t in fake_telegram.sent_texts(USER) if "via webhook" in t] == ["echo: via webhook"]


def test_sigterm_lets_the_turn_in_flight_finish(bot, fake_telegram, fake_llm) -> None:
    proc = bot()
    fake_llm.enqueue(Reply("a slow but complete answer", chunk_chars=4, delay_s=0.3))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "take your time"))
    fake_telegram.wait_for(lambda: fake_llm.count() >= 1, timeout=10)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.stop(timeout=25) == 0
    assert any("a slow but complete answer" in t for t in fake_telegram.sent_texts(USER))


def test_start_help_and_new(bot, fake_telegram, fake_llm) -> None:
    bot()
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "/start"))
    fake_telegram.wait_for_text(USER, f"user id is {USER}")
    fake_telegram.push_update(fake_telegram.text_update(777, 777, "/start"))
    fake_telegram.wait_for_text(777, "your pairing code is")  # an operator: pairing (tests/e2e/test_access.py)
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "/help"))
    fake_telegram.wait_for_text(USER, "/new")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "remember apples"))
    fake_telegram.wait_for_text(USER, "echo: remember apples")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "/new"))
    fake_telegram.wait_for_text(USER, "fresh conversation")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "what did I say?"))
    fake_telegram.wait_for_text(USER, "echo: what did I say?")
    contents = [m["content"] for m in fake_llm.last_request().messages]
    assert "remember apples" not in contents
    assert fake_llm.count() == 2


def test_console_chats_through_the_pipeline(fake_llm, data_dir) -> None:
    env = bot_env({"LLM_BASE_URL": fake_llm.base_url, "LLM_API_KEY": TEST_LLM_KEY, "DATA_DIR": str(data_dir),
                   "PYTHONUNBUFFERED": "1"})
    result = subprocess.run([sys.executable, "-m", "bot", "console"], cwd=REPO_ROOT, env=env,
                            input="hello console\n/state\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "bot> echo: hello console" in result.stdout
    assert "Hot state:" in result.stdout
    assert fake_llm.count() == 1


def test_doctor_reports_problems_and_all_good(bot, fake_telegram, fake_llm) -> None:
    env = bot.env()
    result = run_cli(env, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "getMe: @gateway_test_bot" in result.stdout and "all good" in result.stdout
    result = run_cli({**env, "LLM_API_KEY": "sk-wrong-key-0000"}, "doctor")
    assert result.returncode == 1
    assert "LLM_API_KEY" in result.stdout and "sk-wrong-key-0000" not in result.stdout
    result = run_cli({**env, "TELEGRAM_BOT_TOKEN": "123:wrong"}, "doctor")
    assert result.returncode == 1 and "TELEGRAM_BOT_TOKEN" in result.stdout
    result = run_cli({**env, "DYNO": "web.1"}, "doctor")
    # Heroku's disk is wiped: a warning on SQLite, nothing to warn about with the state in PostgreSQL.
    assert ("ephemeral" in result.stdout) == (bot.database_url is None), result.stdout
    assert TEST_TOKEN not in result.stdout + result.stderr


def test_bad_settings_give_one_clear_line() -> None:
    result = run_cli({"LLM_CONTEXT_TOKENS": "lots"}, "run")
    assert result.returncode == 2
    assert "LLM_CONTEXT_TOKENS" in result.stderr and "Traceback" not in result.stderr
    result = run_cli({}, "run")
    assert result.returncode == 2 and "TELEGRAM_BOT_TOKEN is not set" in result.stderr
    result = run_cli({"TELEGRAM_BOT_TOKEN": TEST_TOKEN}, "run", "--webhook")
    assert result.returncode == 2 and "WEBHOOK_URL" in result.stderr
