"""A full disk and a read-only DATA_DIR, for real, as root and as a normal user.

As root, DATA_DIR is a small tmpfs mounted for the test: filling it gives SQLite a real ENOSPC
(SQLITE_FULL, "database or disk is full"); a read-only mount gives a real EROFS. Linux refuses to
remount a filesystem read-only while a process holds files open for writing (EBUSY), so
"read-only while running" is covered by the failure it produces, a write error, through a full
disk and (test_hardening) a locked database.

A normal user cannot mount, so the same tests take the kernel's other two ways of refusing a
write: RLIMIT_FSIZE set to 0 on the bot process (`prlimit`, from outside, while it runs; or at
exec for a start-up check) makes every file write fail with EFBIG, which SQLite reports as a disk
I/O error (Python ignores SIGXFSZ, so the process is not killed); and a DATA_DIR made read-only
with chmod refuses writes with EACCES (root ignores file modes, hence tmpfs there).
"""

from __future__ import annotations

import os
import resource
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.harness import OPERATOR_ID, REPO_ROOT, SQLITE_ONLY, BotProcess, bot_env, free_port, run_cli
from tests.fakes.llm_api import Hang, Reply

pytestmark = pytest.mark.e2e
USER = 100
UNLIMITED = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)


class Disk:
    """A tmpfs mounted on DATA_DIR (root only); `fill()` takes every free byte, `free_up()` gives them back."""

    full_reasons = ("database or disk is full",)
    read_only_reasons = ("read-only",)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def mount(self, *, size_kb: int, readonly: bool = False) -> None:
        options = f"size={size_kb}k,mode=0755" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs as root (needs CAP_SYS_ADMIN): {done.stderr.strip()}")

    def make_read_only(self, readonly: bool = True) -> None:
        mode = "ro" if readonly else "rw"
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def fill(self, proc: BotProcess | None = None) -> int:
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

    def free_up(self, proc: BotProcess | None = None) -> None:
        self.filler.unlink(missing_ok=True)

    def run_full(self, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m bot ARGS` on a disk that is already full."""
        self.fill()
        return run_cli(env, *args, timeout=60)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class LimitedDisk(Disk):
    """For a normal user: writes refused by RLIMIT_FSIZE=0 on the bot, read-only by chmod."""

    full_reasons = ("disk I/O error", "database or disk is full")  # EFBIG: SQLite's IOERR (FULL if partial)
    read_only_reasons = ("permission denied",)

    def mount(self, *, size_kb: int, readonly: bool = False) -> None:
        pass  # DATA_DIR as it is: the limit is on the process, not on the file system

    def make_read_only(self, readonly: bool = True) -> None:
        for path in (self.path, *self.path.iterdir()):
            mode = path.stat().st_mode
            if readonly:
                path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            else:
                path.chmod(mode | stat.S_IWUSR)

    def fill(self, proc: BotProcess | None = None) -> int:
        assert proc is not None, "the limit is set on the bot's process"
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        return 0

    def free_up(self, proc: BotProcess | None = None) -> None:
        assert proc is not None
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, UNLIMITED)

    def run_full(self, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        def no_writes() -> None:  # in the child, before exec: every file write now fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

        return subprocess.run([sys.executable, "-m", "bot", *args], cwd=REPO_ROOT, env=bot_env(env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
                              preexec_fn=no_writes)  # noqa: PLW1509 - the test process has no threads doing fork

    def unmount(self) -> None:
        if self.path.exists():
            self.make_read_only(False)  # so tmp_path can be cleaned up


@pytest.fixture
def disk(data_dir: Path) -> Iterator[Disk]:
    """Request it before `bot` so the bot is stopped (and its files scanned) before the unmount.
    GATEWAY_TEST_DISK=limited takes the normal user's way as root too (except chmod, which root ignores)."""
    limited = os.geteuid() != 0 or os.environ.get("GATEWAY_TEST_DISK") == "limited"
    disk = LimitedDisk(data_dir) if limited else Disk(data_dir)
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


@SQLITE_ONLY
def test_read_only_data_dir_is_a_clear_error_at_start(disk: Disk, bot) -> None:
    """SQLite only: about SQLite files on a disk that is full or read-only (PostgreSQL keeps nothing there)."""
    if isinstance(disk, LimitedDisk) and os.geteuid() == 0:
        pytest.skip("root ignores file modes: as root this test runs on a read-only tmpfs")
    disk.mount(size_kb=8192)
    assert run_cli(bot.env(), "dlq", "list").returncode == 0  # gateway.db created and migrated
    disk.make_read_only()
    result = run_cli(bot.env(), "run", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cannot use DATA_DIR" in result.stderr
    assert any(reason in result.stderr.lower() for reason in disk.read_only_reasons), result.stderr
    assert "DATA_DIR must be writable" in result.stderr and "Traceback" not in result.stderr
    disk.make_read_only(False)
    assert integrity(disk.path / "gateway.db") == "ok"


@SQLITE_ONLY
def test_full_disk_is_a_clear_error_at_start(disk: Disk, bot) -> None:
    """SQLite only: about SQLite files on a disk that is full or read-only (PostgreSQL keeps nothing there)."""
    disk.mount(size_kb=1024)
    result = disk.run_full(bot.env(), "run")
    assert result.returncode == 1, result.stderr
    assert "cannot use DATA_DIR" in result.stderr and "Traceback" not in result.stderr
    if isinstance(disk, LimitedDisk):  # EFBIG: "File too large", not a full disk: no "free space" hint
        assert "File too large" in result.stderr
    else:
        assert "full" in result.stderr and "free some disk space" in result.stderr


@SQLITE_ONLY
def test_disk_filling_up_while_running_loses_nothing(disk: Disk, bot, fake_telegram, fake_llm) -> None:
    """SQLite only: about SQLite files on a disk that is full or read-only (PostgreSQL keeps nothing there)."""
    disk.mount(size_kb=16384)
    proc = bot(RETRY_WAIT_SCALE="0")
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "before the disk fills"))
    fake_telegram.wait_for_text(USER, "echo: before the disk fills", timeout=20)
    disk.fill(proc)
    for index in range(3):
        fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"while full {index}"))
    # The operator hears about it while the disk is still full.
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=30)
    assert any(reason in alert.plain_text for reason in disk.full_reasons), alert.plain_text
    assert "free disk space" in alert.plain_text
    # The sender of the update that could not be journaled is told it waits (once).
    fake_telegram.wait_for_text(USER, "Yours is kept", timeout=10)
    assert not any("echo: while full" in t for t in fake_telegram.sent_texts(USER))
    disk.free_up(proc)
    for index in range(3):  # every message is answered once there is room again, each once
        fake_telegram.wait_for_text(USER, f"echo: while full {index}", timeout=60)
    fake_telegram.wait_for_text(OPERATOR_ID, "writes work again", timeout=10)
    texts = fake_telegram.sent_texts(USER)
    assert [t for t in texts if t.startswith("echo: while full")] == [f"echo: while full {i}" for i in range(3)]
    assert sum("Yours is kept" in t for t in texts) == 1
    assert proc.alive
    assert integrity(disk.path / "gateway.db") == "ok"
    assert proc.stop() == 0


@SQLITE_ONLY
def test_disk_filling_up_mid_turn_fails_with_a_ref_and_loses_nothing(disk: Disk, bot, fake_telegram,
                                                                     fake_llm) -> None:
    """SQLite only: about SQLite files on a disk that is full or read-only (PostgreSQL keeps nothing there)."""
    disk.mount(size_kb=16384)
    proc = bot(RETRY_WAIT_SCALE="0")
    fake_llm.enqueue(Hang(2.0, then=Reply("an answer the disk cannot keep")))
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "journaled, then the disk fills"))
    fake_telegram.wait_for(lambda: fake_llm.count() >= 1, timeout=20)  # journaled and in the LLM call
    disk.fill(proc)
    # The answer could not be kept: the user is told, with a ref, that the message waits ...
    notice = fake_telegram.wait_for_text(USER, "Yours is kept", timeout=30)
    assert "ref: " in notice.plain_text
    alert = fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=10)
    assert "refuses writes" in alert.plain_text
    assert any(reason in alert.plain_text for reason in disk.full_reasons), alert.plain_text
    disk.free_up(proc)
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


@SQLITE_ONLY
def test_webhook_on_a_full_disk_answers_503_so_telegram_retries(disk: Disk, bot, fake_telegram) -> None:
    """SQLite only: about SQLite files on a disk that is full or read-only (PostgreSQL keeps nothing there)."""
    disk.mount(size_kb=16384)
    port = free_port()
    proc = bot(WEBHOOK_URL="https://bot.example.com/hook", PORT=str(port))
    disk.fill(proc)
    update = fake_telegram.text_update(USER, USER, "posted while full", update_id=8100)
    status, body = fake_telegram.deliver_webhook(update, port)
    assert status == 503 and "journal unavailable" in str(body), (status, body)
    fake_telegram.wait_for_text(OPERATOR_ID, "storage:", timeout=20)
    disk.free_up(proc)
    status, _ = fake_telegram.deliver_webhook(update, port)  # Telegram's retry of the same update
    assert status == 200
    fake_telegram.wait_for_text(USER, "echo: posted while full", timeout=30)
    assert integrity(disk.path / "gateway.db") == "ok"
