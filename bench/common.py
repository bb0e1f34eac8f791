"""Shared parts of the benchmark and the soak: the stand-ins as the load sees them, the bot
processes, and what is measured of a process (CPU seconds and memory from /proc).

The Bot API stand-in is `tests.fakes.telegram_api.FakeTelegram`, extended here to notice the
moment a chat shows a known answer in full (a sent message, or the last edit of a streamed
one: what a person would read), so latency is measured at the stand-in, from the moment an
update is queued for getUpdates to the moment the final text is delivered. The LLM stand-in
runs in its own process (`bench/llm_server.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.harness import TEST_LLM_KEY, TEST_TOKEN, bot_env, redact
from tests.fakes.telegram_api import FakeTelegram

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = TEST_TOKEN
LLM_KEY = TEST_LLM_KEY
MODEL = "gpt-4o-mini"
OPERATOR_ID = 900
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_FILLER = ("Here is a plain answer of a realistic length for a chat, with a few sentences and no "
           "markup at all, so that both bots deliver exactly the same visible text and the stand-in "
           "can tell when the whole answer has arrived. ")


def question(user_id: int, index: int) -> str:
    """The text user `user_id` sends as its `index`-th message (unique per message)."""
    return f"q{index} from user {user_id}: what is a good name for a cat"


def answer_for(text: str, chars: int) -> str:
    """The LLM stand-in's answer to `text`: unique (it quotes the question), about `chars` long."""
    head = f"Re {text}. "
    body = (_FILLER * (chars // len(_FILLER) + 2))[: max(0, chars - len(head))]
    return (head + body).strip()


def quiet_stand_ins() -> None:
    """The stand-ins log a client hanging up mid-request (a cancelled "typing" call, a timed-out
    LLM stream) with a traceback and the request URL, which holds the (test) token: keep that
    out of the report; `server_errors()` still has them."""
    logging.getLogger("tests.fakes").setLevel(logging.CRITICAL)


# Bot API stand-in -------------------------------------------------------------------------
@dataclass
class _Pending:
    key: Any
    injected_at: float


class BenchTelegram(FakeTelegram):
    """FakeTelegram that times each expected answer from injection to final delivery.

    `inject` queues a text update and remembers the answer expected in that chat; when a
    sendMessage or editMessageText leaves exactly that visible text in the chat, the latency is
    recorded under the message's key and `on_delivered(key)` runs (in the stand-in's thread,
    under its lock: it may inject the next message, which is how the closed loop is driven).
    """

    def __init__(self) -> None:
        super().__init__(TOKEN, long_poll_cap=1.0)
        self._expected: dict[tuple[int, str], _Pending] = {}
        self.latency_s: dict[Any, float] = {}
        self.injected_at: dict[Any, float] = {}
        self.last_delivery = 0.0
        self.on_delivered: Callable[[Any], None] | None = None

    def inject(self, chat_id: int, user_id: int, text: str, answer: str | None, key: Any) -> int:
        update = self.text_update(chat_id, user_id, text)
        with self._lock:
            now = time.monotonic()
            if answer is not None:
                self._expected[(chat_id, answer)] = _Pending(key, now)
            self.injected_at[key] = now
            return self.push_update(update)

    @property
    def lock(self) -> contextlib.AbstractContextManager:
        """Held, it keeps the stand-in from serving (to inject a burst before any answer is seen)."""
        return self._lock

    def delivered_count(self, tag: object = None) -> int:
        """Answers delivered so far (only those whose key starts with `tag`, if given)."""
        with self._lock:
            if tag is None:
                return len(self.latency_s)
            return sum(1 for key in self.latency_s if key[0] == tag)

    def api_calls(self, *methods: str) -> Counter[str]:
        """Calls of these methods so far, per method."""
        wanted = {m.lower() for m in methods}
        with self._lock:
            return Counter(call.method for call in self._calls if call.method.lower() in wanted)

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        result = super()._send_message(params)
        self._seen(result)
        return result

    def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        result = super()._edit_message_text(params)
        self._seen(result)
        return result

    def _seen(self, result: dict[str, Any]) -> None:
        pending = self._expected.pop((result["chat"]["id"], result.get("text")), None)
        if pending is None:
            return
        now = time.monotonic()
        self.latency_s[pending.key] = now - pending.injected_at
        self.last_delivery = now
        if self.on_delivered is not None:
            self.on_delivered(pending.key)


# Processes ----------------------------------------------------------------------------------
class LLMServer:
    """`bench/llm_server.py` in a child process; `base_url` for LLM_BASE_URL."""

    def __init__(self, *, answer_chars: int, fault_rate: float = 0.0, seed: int = 1,
                 hang_s: float = 3.0, log_path: Path | None = None) -> None:
        self.argv = [sys.executable, "-m", "bench.llm_server", "--answer-chars", str(answer_chars),
                     "--fault-rate", str(fault_rate), "--seed", str(seed), "--hang-seconds", str(hang_s)]
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def start(self) -> LLMServer:
        # Its stderr (the stand-in logs clients that hang up mid-answer, as timeouts do) goes to a file.
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         stderr=log, text=True, start_new_session=True)
        finally:
            if self.log_path:
                log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the server exits by itself if it cannot start
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"the LLM stand-in did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_bench/stats", timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class BotUnderTest:
    """One bot process (ours or the baseline) with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> BotUnderTest:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=bot_env(self.env), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_polling(self, fake: FakeTelegram, *, timeout_s: float = 30.0, needs: str | None = None) -> None:
        """Until the bot long-polls (and, if `needs` names a method, has called it): ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before it was ready\n{self.tail()}")
            polled = any(c.at >= self.started_at for c in fake.calls("getUpdates"))
            if polled and (needs is None or any(c.at >= self.started_at for c in fake.calls(needs))):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f} s\n{self.tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL of its process group if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        text = redact(self.log_path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


def describe_setup() -> str:
    """What was measured, on what: the commit (and whether product code had local changes), CPUs, load."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    dirty = bool(git("status", "--porcelain", "--", "bot", "core", "config").strip())
    return (f"commit {commit}{' with uncommitted changes in bot/ core/ config/' if dirty else ''}; "
            f"{os.cpu_count()} CPUs; {load_average()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def memory_kb(pid: int, field: str = "VmHWM") -> int:
    """A /proc/<pid>/status memory line in kB: VmHWM is the peak RSS, VmRSS the current one."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def self_cpu_seconds() -> float:
    """CPU of this harness process (the Bot API stand-in and the load driver)."""
    return time.process_time()


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def gateway_env(telegram: FakeTelegram, llm: LLMServer, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for `python -m bot run` against the stand-ins."""
    env = {
        "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": telegram.base_url, "LLM_BASE_URL": llm.base_url,
        "LLM_API_KEY": LLM_KEY, "LLM_MODEL": MODEL, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING",
        "OPERATOR_CHAT_ID": str(OPERATOR_ID), "ALLOWED_USER_IDS": "*", "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


def baseline_env(telegram: FakeTelegram, llm: LLMServer) -> dict[str, str]:
    return {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_BASE_URL": telegram.base_url, "LLM_BASE_URL": llm.base_url,
            "LLM_API_KEY": LLM_KEY, "LLM_MODEL": MODEL, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
