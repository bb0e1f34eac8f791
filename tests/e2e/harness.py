"""Process harness for end-to-end tests: run the real bot (``python -m bot``) as a
subprocess against the local fakes in ``tests/fakes``.

Why a subprocess: the things e2e tests must prove (settings from the environment,
startup and graceful SIGTERM shutdown, crash safety across restarts, no secrets in
stdout/stderr) only exist at process level. The environment is rebuilt from
scratch for each bot so a developer's shell or CI variables never steer the bot
under test.

E2E test modules should declare ``pytestmark = pytest.mark.e2e`` (the marker has
to be registered in the project's pytest configuration).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

import pytest

from tests.e2e.backend import Backend
from tests.fakes.llm_api import FakeLLM
from tests.fakes.telegram_api import FakeTelegram

__all__ = [
    "OPERATOR_ID",
    "REPO_ROOT",
    "TEST_LLM_KEY",
    "TEST_TOKEN",
    "BotFactory",
    "BotProcess",
    "BotStartError",
    "POSTGRES_ONLY",
    "SQLITE_ONLY",
    "base_env",
    "bot_env",
    "find_secret_lines",
    "free_port",
    "redact",
    "run_cli",
]

#: A syntactically valid bot token; "SECRET" makes leaks easy to spot by eye too.
TEST_TOKEN = "123456789:AAE-test-SECRET-token_abcdefghijklmnop"
TEST_LLM_KEY = "sk-test-SECRET-llm-key-0123456789"
OPERATOR_ID = 900
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Strings that must never appear in the bot's output. The token's secret half is
#: listed on its own because a log that masks or URL-encodes the id still leaks it.
SECRETS: tuple[str, ...] = (TEST_TOKEN, TEST_TOKEN.split(":", 1)[1], TEST_LLM_KEY)

#: A test that is about one backend only runs on that one (the `backend` fixture is overridden);
#: say why in the test's docstring.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"])

# Variables removed from the inherited environment: the brief's prefixes plus every
# other setting in DESIGN.md, so only what a test passes reaches the bot.
_SCRUB_PREFIXES = (
    "TELEGRAM_",
    "LLM_",
    "OPENAI_",
    "OPERATOR_",
    "ALLOWED_",
    "WEBHOOK_",
    "BREAKER_",
    "ESCALATION_",
    "DATABASE_",
    "LEASE_",
    "USER_DAILY_",
    "USER_MESSAGES_",
    "MONTHLY_BUDGET",
    "DLQ_",
    "TELEMETRY_",
    "HOT_STATE_",
    "OTEL_",
    "ACCESS_",
    "TTS_",
    "IMAGE_",
)
_SCRUB_NAMES = frozenset({"PORT", "DATA_DIR", "LOG_LEVEL", "LOG_FORMAT", "DYNO", "GATEWAY_TEST_HOOKS",
                          "RETRY_WAIT_SCALE", "GATEWAY_CLOCK_OFFSET_FILE", "MODELS_FILE"})


class BotStartError(AssertionError):
    """The bot died or did not become ready; the message carries its log tail."""


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for the bot's webhook server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redact(text: str, extra: Sequence[str] = ()) -> str:
    """Replace the test secrets (and ``extra`` ones, e.g. the database password) so they can be
    printed safely."""
    for secret, label in zip(SECRETS, ("<TOKEN>", "<TOKEN-SECRET>", "<LLM-KEY>"), strict=True):
        text = text.replace(secret, label)
    for secret in extra:
        text = text.replace(secret, "<SECRET>")
    return text


def find_secret_lines(text: str, extra: Sequence[str] = ()) -> list[str]:
    """Lines of ``text`` that contain a test secret or one of ``extra`` (returned redacted)."""
    everything = (*SECRETS, *extra)
    return [redact(line, extra) for line in text.splitlines() if any(s in line for s in everything)]


def database_password(env: Mapping[str, str]) -> tuple[str, ...]:
    """The password in ``env``'s DATABASE_URL, if any (a secret like the token)."""
    url = env.get("DATABASE_URL")
    password = urlsplit(url).password if url else None
    return (password,) if password else ()


def base_env(fake_telegram: FakeTelegram, fake_llm: FakeLLM, data_dir: Path) -> dict[str, str]:
    """The settings every e2e bot starts from (override per test)."""
    return {
        "TELEGRAM_BOT_TOKEN": TEST_TOKEN,
        "TELEGRAM_API_BASE_URL": fake_telegram.base_url,
        "LLM_BASE_URL": fake_llm.base_url,
        "LLM_API_KEY": TEST_LLM_KEY,
        "LLM_MODEL": "gpt-4o-mini",
        "DATA_DIR": str(data_dir),
        "OPERATOR_CHAT_ID": str(OPERATOR_ID),
        "ALLOWED_USER_IDS": "100,101,102",
        "LOG_LEVEL": "DEBUG",
        "LLM_TIMEOUT_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
        # RETRY_WAIT_SCALE and GATEWAY_CLOCK_OFFSET_FILE are read only with this switch on
        # (config/settings.py TestHooks): tests may set them, users cannot by accident.
        "GATEWAY_TEST_HOOKS": "1",
    }


def bot_env(env: Mapping[str, str]) -> dict[str, str]:
    """The full environment for a bot process: scrubbed ``os.environ`` plus ``env``."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_SCRUB_PREFIXES) and key not in _SCRUB_NAMES
    }
    return {**inherited, **env}


def run_cli(
    env: Mapping[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a one-shot ``python -m bot ARGS`` (doctor, trace, dlq ...) and capture output.

    Its output must not hold DATABASE_URL's password (checked here, as the fixture checks a bot's)."""
    result = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=REPO_ROOT,
        env=bot_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    password = database_password(env)
    leaked = [line for line in find_secret_lines(result.stdout + result.stderr, password) if "<SECRET>" in line]
    assert not leaked, f"python -m bot {' '.join(args)} printed the database password:\n" + "\n".join(leaked)
    return result


class BotProcess:
    """One ``python -m bot`` process with its output appended to ``log_path``."""

    def __init__(
        self,
        env: dict[str, str],
        data_dir: Path,
        log_path: Path,
        args: Sequence[str] = ("run",),
    ) -> None:
        self.env = dict(env)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.args = tuple(args)
        self.started_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        state = (
            "not started" if self._proc is None else f"pid={self._proc.pid} rc={self.returncode}"
        )
        return f"<BotProcess {' '.join(self.args)} {state}>"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Launch the bot; returns immediately (see :meth:`wait_ready`)."""
        if self._proc is not None:
            raise RuntimeError("BotProcess objects are single-use; create a new one to restart")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor; ours can close at once.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bot", *self.args],
                cwd=REPO_ROOT,
                env=bot_env(self.env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals only; kill() can take the whole group
            )
        return self

    def wait_ready(self, fake_telegram: FakeTelegram, timeout: float = 20.0) -> Self:
        """Wait until the bot is serving.

        Ready means: a ``setMyCommands`` call reached the fake after this start, and
        then either a ``getUpdates`` call (polling) or, with ``WEBHOOK_URL`` set,
        ``GET http://127.0.0.1:$PORT/healthz`` answering 200 with ``"ready": true``.
        """
        started = self._require_started()
        webhook = bool(self.env.get("WEBHOOK_URL"))
        port = self.env.get("PORT")
        if webhook and not port:
            raise ValueError("webhook mode needs PORT in env (use free_port())")
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise BotStartError(
                    f"bot exited with code {self.returncode} before it was ready\n{self.tail()}"
                )
            commands_set = any(c.at >= started for c in fake_telegram.calls("setMyCommands"))
            if commands_set:
                if webhook:
                    if self._healthz_ok(int(port or 0)):
                        return self
                elif any(c.at >= started for c in fake_telegram.calls("getUpdates")):
                    return self
            if time.monotonic() >= deadline:
                seen = sorted({c.method for c in fake_telegram.calls() if c.at >= started})
                mode = "webhook" if webhook else "polling"
                raise BotStartError(
                    f"bot not ready within {timeout:.0f}s (mode: {mode}; "
                    f"Bot API methods called since start: {seen})\n{self.tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 25.0) -> int:
        """SIGTERM, wait up to ``timeout``; returns the exit code.

        If the bot ignores SIGTERM it is killed and the (negative) signal code is
        returned, so ``assert bot.stop() == 0`` fails loudly for a hung shutdown.
        """
        proc = self._require_proc()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()
        return int(proc.returncode)

    def kill(self) -> int:
        """SIGKILL the bot's whole process group (a crash) and reap it."""
        proc = self._require_proc()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(10)
        return int(proc.returncode)

    # ------------------------------------------------------------------ inspection
    def alive(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The process id."""
        return self._require_proc().pid

    @property
    def returncode(self) -> int | None:
        """Exit code (None while running or before start)."""
        return None if self._proc is None else self._proc.poll()

    def output(self) -> str:
        """Everything this process wrote to stdout/stderr so far."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", "replace")

    def tail(self, lines: int = 50) -> str:
        """The last ``lines`` lines of output, redacted, for error messages."""
        text = redact(self.output(), database_password(self.env))
        last = text.splitlines()[-lines:]
        return f"--- last {len(last)} lines of {self.log_path} ---\n" + "\n".join(last)

    def wait_for_output(self, substring: str, timeout: float = 10.0) -> str:
        """Wait until ``substring`` appears in the output; returns the output."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.output()
            if substring in text:
                return text
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{substring!r} not in bot output after {timeout}s\n{self.tail()}"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ internals
    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("BotProcess not started")
        return self._proc

    def _require_started(self) -> float:
        self._require_proc()
        assert self.started_at is not None
        return self.started_at

    @staticmethod
    def _healthz_ok(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                # /healthz answers 200 while the webhook still refuses updates (503 until the webhook is
                # set): ready is its "ready" flag, or two bots starting at once race each other.
                return bool(response.status == 200 and json.loads(response.read()).get("ready") is True)
        except (urllib.error.URLError, OSError, ValueError):
            return False


class BotFactory:
    """What the ``bot`` fixture returns: ``bot(**env_overrides) -> BotProcess``.

    Overrides are stringified; an override of ``None`` removes that variable from
    the base environment (e.g. ``bot(LLM_API_KEY=None, OPENAI_API_KEY=key)``).
    Every process started is remembered so the fixture can stop it and check its
    output for leaked secrets. ``backend`` says where the bot keeps its state (SQLite
    under DATA_DIR, or PostgreSQL as DATABASE_URL); read that state with :meth:`query`.
    """

    def __init__(
        self,
        fake_telegram: FakeTelegram,
        fake_llm: FakeLLM,
        data_dir: Path,
        log_dir: Path,
        backend: Backend | None = None,
    ) -> None:
        self.fake_telegram = fake_telegram
        self.fake_llm = fake_llm
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.backend = backend or Backend.sqlite(data_dir)
        self.processes: list[BotProcess] = []
        # The backend's readers, for tests: bot.query("SELECT ... WHERE x = ?", [x]) and friends.
        self.query = self.backend.query
        self.records = self.backend.records
        self.spans = self.backend.spans
        self.artifacts = self.backend.artifacts
        self.artifact = self.backend.artifact

    @property
    def database_url(self) -> str | None:
        """DATABASE_URL of the bots started here (None on SQLite)."""
        return self.backend.database_url

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every string that must never appear in a bot's output."""
        return (*SECRETS, *self.backend.secrets)

    def env(self, **overrides: object) -> dict[str, str]:
        """The base environment with ``overrides`` applied (for :func:`run_cli` too)."""
        env = {**base_env(self.fake_telegram, self.fake_llm, self.data_dir), **self.backend.env()}
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def __call__(
        self,
        *,
        args: Sequence[str] = ("run",),
        wait: bool = True,
        ready_timeout: float = 20.0,
        **env_overrides: object,
    ) -> BotProcess:
        """Start a bot (and by default wait until it is ready)."""
        log_path = self.log_dir / f"bot-{len(self.processes) + 1}.log"
        proc = BotProcess(self.env(**env_overrides), self.data_dir, log_path, args)
        self.processes.append(proc)
        proc.start()
        if wait:
            proc.wait_ready(self.fake_telegram, timeout=ready_timeout)
        return proc

    def shutdown(self) -> list[str]:
        """Stop every process; returns problems found (leaked secrets), redacted."""
        problems: list[str] = []
        for proc in self.processes:
            if proc.alive():
                proc.stop(timeout=25)
        for proc in self.processes:
            leaked = find_secret_lines(proc.output(), self.backend.secrets)
            if leaked:
                shown = "\n".join(f"    {line}" for line in leaked[:20])
                problems.append(
                    f"{proc.log_path}: {len(leaked)} line(s) contain a secret:\n{shown}"
                )
        return problems

    def describe(self, lines: int = 30) -> Iterable[str]:
        """Redacted log tails of all processes, for post-mortem output."""
        for proc in self.processes:
            yield f"{proc!r} [{self.backend.name}]\n{proc.tail(lines)}"
