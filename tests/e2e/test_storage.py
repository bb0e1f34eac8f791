"""A full disk and a read-only DATA_DIR, for real: DATA_DIR is a small tmpfs mounted for the test.

Filling the tmpfs gives SQLite a real ENOSPC (SQLITE_FULL, "database or disk is full"); a
read-only mount gives a real EROFS. Mounting needs root with CAP_SYS_ADMIN (this project's CI
machine has it); elsewhere these tests skip and say why. Linux refuses to remount a filesystem
read-only while a process holds files open for writing (EBUSY), so "read-only while running" is
covered by the failure it produces, a write error, through a full disk and (test_hardening) a
locked database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import OPERATOR_ID, free_port, run_cli
from tests.fakes.llm_api import Hang, Reply

pytestmark = pytest.mark.e2e
USER = 100


class Disk:
    """A tmpfs mounted on DATA_DIR; `fill()` takes every free byte, `free_up()` gives them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def mount(self, *, size_kb: int, readonly: bool = False) -> None:
        options = f"size={size_kb}k,mode=0755" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {done.stderr.strip()}")

    def remount(self, *, readonly: bool) -> None:
        mode = "ro" if readonly else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def fill(self) -> int:
        """Write zeros until the disk is full; returns the bytes written."""
        written = 0
        with open(self.filler, "ab", buffering=0) as out:
            block = b"\0" * 65536
            while True:
                try:
                    written += out.write(block)
                except OSError:
                    break
            while True:  # the last partial block
                try:
                    written += out.write(b"\0" * 512)
                except OSError:
                    break
        return written

    def free_up(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def disk(data_dir: Path) -> Iterator[Disk]:
    """Request it before `bot` so the bot is stopped (and its files scanned) before the unmount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = Disk(data_dir)
    try:
        yield disk
    finally:
        disk.unmount()


def integrity(path: Path) -> str:
    check = sqlite3.connect(path)
    try:
        return check.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        check.close()


def test_read_only_data_dir_is_a_clear_error_at_start(disk: Disk, bot) -> None:
    disk.mount(size_kb=8192)
    assert run_cli(bot.env(), "dlq", "list").returncode == 0  # gateway.db created and migrated
    disk.remount(readonly=True)
    result = run_cli(bot.env(), "run", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot use DATA_DIR" in result.stderr and "read-only" in result.stderr.lower()
    assert "DATA_DIR must be writable" in result.stderr and "Traceback" not in result.stderr
    disk.remount(readonly=False)
    assert integrity(disk.path / "gateway.db") == "ok"


def test_full_disk_is_a_clear_error_at_start(disk: Disk, bot) -> None:
    disk.mount(size_kb=1024)
    disk.fill()
    result = run_cli(bot.env(), "run", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot use DATA_DIR" in result.stderr and "full" in result.stderr
    assert "free some disk space" in result.stderr and "Traceback" not in result.stderr


def test_disk_filling_up_while_running_loses_nothing(disk: Disk, bot, fake_telegram, fake_llm) -> None:
    disk.mount(size_kb=16384)
    proc = bot(RETRY_WAIT_SCALE="0")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "before the disk fills"))
    fake_telegram.wait_for_text(USER, "echo: before the disk fills", timeout=20)
    disk.fill()
    for index in range(3):
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"while full {index}"))
    # The operator hears about it while the disk is still full.
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=30)
    assert "database or disk is full" in alert.plain_text and "free disk space" in alert.plain_text
    # The sender of the update that could not be journaled is told it waits (once).
    fake_telegram.wait_for_text(USER, "Yours is kept", timeout=10)
    assert not any("echo: while full" in t for t in fake_telegram.sent_texts(USER))
    disk.free_up()
    for index in range(3):  # every message is answered once there is room again, each once
        fake_telegram.wait_for_text(USER, f"echo: while full {index}", timeout=60)
    fake_telegram.wait_for_text(OPERATOR_ID, "writes work again", timeout=10)
    texts = fake_telegram.sent_texts(USER)
    assert [t for t in texts if t.startswith("echo: while full")] == [f"echo: while full {i}" for i in range(3)]
    assert sum("Yours is kept" in t for t in texts) == 1
    assert proc.alive
    assert integrity(disk.path / "gateway.db") == "ok"
    assert proc.stop() == 0


def test_disk_filling_up_mid_turn_fails_with_a_ref_and_loses_nothing(disk: Disk, bot, fake_telegram,
                                                                     fake_llm) -> None:
    disk.mount(size_kb=16384)
    proc = bot(RETRY_WAIT_SCALE="0")
    fake_llm.enqueue(Hang(2.0, then=Reply("an answer the disk cannot keep")))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "journaled, then the disk fills"))
    fake_telegram.wait_for(lambda: fake_llm.count() >= 1, timeout=20)  # journaled and in the LLM call
    disk.fill()
    # The answer could not be kept: the user is told, with a ref, that the message waits ...
    notice = fake_telegram.wait_for_text(USER, "Yours is kept", timeout=30)
    assert "ref: " in notice.plain_text
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=10)
    assert "refuses writes" in alert.plain_text and "full" in alert.plain_text
    disk.free_up()
    # ... and once there is room it runs again by itself (no restart, no new message needed;
    # the stand-in now answers with its default echo).
    fake_telegram.wait_for_text(USER, "echo: journaled, then the disk fills", timeout=30)
    fake_telegram.wait_for_text(OPERATOR_ID, "writes work again", timeout=10)
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "after"))
    fake_telegram.wait_for_text(USER, "echo: after", timeout=30)
    texts = fake_telegram.sent_texts(USER)
    assert sum("Yours is kept" in t for t in texts) == 1, texts
    assert proc.alive
    assert integrity(disk.path / "gateway.db") == "ok"
    assert proc.stop() == 0


def test_webhook_on_a_full_disk_answers_503_so_telegram_retries(disk: Disk, bot, fake_telegram) -> None:
    disk.mount(size_kb=16384)
    port = free_port()
    bot(WEBHOOK_URL="https://bot.example.com/hook", PORT=str(port))
    disk.fill()
    update = fake_telegram.text_update(USER, USER, "posted while full", update_id=8100)
    status, body = fake_telegram.deliver_webhook(update, port)
    assert status == 503 and "journal unavailable" in str(body), (status, body)
    fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=20)
    disk.free_up()
    status, _ = fake_telegram.deliver_webhook(update, port)  # Telegram's retry of the same update
    assert status == 200
    fake_telegram.wait_for_text(USER, "echo: posted while full", timeout=30)
    assert integrity(disk.path / "gateway.db") == "ok"
