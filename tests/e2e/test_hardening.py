"""Bad input, storage trouble and security through the real entry points."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.e2e.harness import OPERATOR_ID, SQLITE_ONLY, TEST_LLM_KEY, TEST_TOKEN, free_port, run_cli
from tests.e2e.journal import settled
from tests.fakes.telegram_api import post_json

pytestmark = pytest.mark.e2e
USER = 102


@SQLITE_ONLY
def test_unusable_data_dir_is_a_clear_error_at_start(bot, tmp_path) -> None:
    """SQLite only: DATA_DIR is where SQLite keeps its files; with DATABASE_URL nothing is stored there."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = run_cli(bot.env(DATA_DIR=str(blocker / "data")), "run")
    assert result.returncode == 1
    assert "cannot use DATA_DIR" in result.stderr and "Traceback" not in result.stderr


@SQLITE_ONLY
def test_locked_database_at_start_is_a_clear_error(bot, data_dir) -> None:
    """SQLite only: about SQLite's file lock held by another process."""
    run_cli(bot.env(), "dlq", "list")  # creates and migrates gateway.db
    holder = sqlite3.connect(data_dir / "gateway.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_cli(bot.env(), "run", timeout=60)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1
    assert "locked" in result.stderr and "Traceback" not in result.stderr


@SQLITE_ONLY
def test_database_locked_while_running_loses_nothing(bot, fake_telegram, fake_llm, data_dir) -> None:
    """SQLite only: about SQLite's file lock held by another process (and its integrity check)."""
    bot()
    holder = sqlite3.connect(data_dir / "gateway.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(7.0, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, "while locked"))
        fake_telegram.wait_for(lambda: any("while locked" in t or "ref:" in t
                                           for t in fake_telegram.sent_texts(USER)), timeout=40)
    finally:
        release.join()
        holder.close()
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "after the lock"))
    fake_telegram.wait_for_text(USER, "echo: after the lock", timeout=20)
    check = sqlite3.connect(data_dir / "gateway.db")
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_odd_text_and_bad_documents_get_clear_answers(bot, fake_telegram, fake_llm) -> None:
    bot()
    emoji = "😀" * 4096
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, emoji[:4096]))
    rtl = "שלום עולם " * 400
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, rtl[:4096]))
    fake_telegram.wait_for(lambda: fake_llm.count() >= 2, timeout=20)
    junk = bytes(range(256)) * 64
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, junk, "blob.bin", "application/octet-stream"))
    fake_telegram.wait_for_text(USER, "can't read blob.bin", timeout=20)
    huge = fake_telegram.document_update(USER, USER, b"small", "huge.txt", "text/plain", file_size=25 * 1024 * 1024)
    fake_telegram.push_update(huge)
    fake_telegram.wait_for_text(USER, "20.0 MB", timeout=20)
    assert fake_llm.count() == 2


def test_a_flood_of_messages_is_throttled_before_any_spend(bot, fake_telegram, fake_llm, data_dir) -> None:
    bot(USER_MESSAGES_PER_MINUTE="10")
    flood = [fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"spam {index}")) for index in range(100)]
    fake_telegram.wait_for_text(USER, "faster than I can answer", timeout=30)
    # Wait until every message of the flood is settled (answered or throttled), then count.
    fake_telegram.wait_for(lambda: settled(bot, flood), timeout=60, message="the flood settled in the journal")
    assert fake_llm.count() == 10
    notices = [t for t in fake_telegram.sent_texts(USER) if "faster than I can answer" in t]
    assert len(notices) == 1


def test_injection_in_command_arguments_is_refused_cleanly(bot, fake_telegram, fake_llm) -> None:
    bot()
    for text in ("/artifact ../../etc/passwd", "/artifact ' OR 1=1 --", "/artifact artifact://zzzzzzzzzzzzzz",
                 "/artifact $(rm -rf /)"):
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))
    fake_telegram.wait_for(lambda: len([t for t in fake_telegram.sent_texts(USER)
                                        if "Cannot send that artifact" in t]) == 4, timeout=20)
    for text in ("/trace ../../x", "/trace ' OR 1=1 --", "/trace ;cat /etc/passwd"):
        fake_telegram.push_update(fake_telegram.text_update(OPERATOR_ID, OPERATOR_ID, text))
    fake_telegram.wait_for(lambda: len([t for t in fake_telegram.sent_texts(OPERATOR_ID)
                                        if "Not a trace reference" in t]) == 3, timeout=20)
    assert fake_llm.count() == 0


def test_non_operator_gets_nothing_from_operator_commands(bot, fake_telegram, fake_llm) -> None:
    port = free_port()
    bot(WEBHOOK_URL="https://bot.example.com/hook", PORT=str(port))
    commands = ["/trace abcdef12", "/dlq", "/dlq 1", "/replay 1", "/replay all", "/discard 1"]
    for index, text in enumerate(commands):
        status, _ = fake_telegram.deliver_webhook(fake_telegram.text_update(USER, USER, text, update_id=7000 + index),
                                                  port)
        assert status == 200
    fake_telegram.wait_for(lambda: len(fake_telegram.sent_texts(USER)) == len(commands), timeout=20)
    assert all(t == "That command is for the operator only." for t in fake_telegram.sent_texts(USER))
    status, _ = post_json(f"http://127.0.0.1:{port}/hook", fake_telegram.text_update(USER, USER, "x"))
    assert status == 403
    assert fake_llm.count() == 0


def test_secrets_never_reach_storage_or_replies(bot, fake_telegram, fake_llm) -> None:
    from tests.fakes.llm_api import Error

    proc = bot(RETRY_WAIT_SCALE="0")
    fake_llm.enqueue(Error.invalid_api_key())
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "first"))
    fake_telegram.wait_for_text(USER, "ref:", timeout=20)
    fake_telegram.push_update(fake_telegram.document_update(USER, USER, b"notes " * 1000, "notes.txt", "text/plain"))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "second"))
    fake_telegram.wait_for_text(USER, "echo: second", timeout=20)
    proc.stop()
    stored = list(bot.backend.stored())  # DATA_DIR's files, and on PostgreSQL every table
    assert any(where.startswith("table ") for where, _ in stored) or bot.backend.name == "sqlite"
    for where, blob in stored:
        for secret in bot.secrets:
            assert secret.encode() not in blob, where
    for chat in (USER, OPERATOR_ID):
        for text in fake_telegram.sent_texts(chat):
            assert TEST_TOKEN not in text and TEST_LLM_KEY not in text
