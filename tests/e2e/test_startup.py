"""Start-up against Bot APIs that are wrong in the ways a newcomer meets: unreachable, a rejected
token, a wrong URL, a getMe answer that is not a bot, a server that does not long-poll.

Every error is one line on stderr with exit code 1, `doctor` says what `run` says, a stop
signal during the start-up retries is obeyed at once, and no output holds the token.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from aiohttp import web

from tests.e2e.harness import REPO_ROOT, bot_env, find_secret_lines, free_port, run_cli
from tests.fakes.telegram_api import BackgroundServer, FakeTelegram

pytestmark = pytest.mark.e2e
BOT_USER = {"id": 123456789, "is_bot": True, "first_name": "Stub", "username": "stub_bot"}


class StubBotApi(BackgroundServer):
    """A Bot API that is not Telegram: getMe answers `me`; getUpdates answers at once, empty
    (as some emulators do instead of long polling); anything else answers `true`."""

    def __init__(self, me: dict[str, Any]) -> None:
        super().__init__()
        self.me = me
        self.calls: list[tuple[str, float]] = []

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        with self._lock:
            self.calls.append((method, time.monotonic()))
        results: dict[str, Any] = {"getMe": self.me, "getUpdates": [], "getWebhookInfo": {"url": ""}}
        return web.json_response({"ok": True, "result": results.get(method, True)})

    def times(self, method: str) -> list[float]:
        with self._lock:
            return [at for name, at in self.calls if name == method]


def assert_one_line_error(result: Any, *needles: str) -> str:
    """Exit 1, one `error:` line on stderr containing every needle, no traceback, no secret."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert find_secret_lines(result.stdout + result.stderr) == []
    return errors[0]


def test_stop_signal_during_start_up_retries_is_obeyed_at_once(bot) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    proc = bot(wait=False, TELEGRAM_API_BASE_URL=unreachable)
    proc.wait_for_output("reachable", timeout=20)  # the first getMe failed: now in the retries
    asked = time.monotonic()
    code = proc.stop(timeout=10)
    assert time.monotonic() - asked < 2.0
    assert code == 0, proc.tail()


def test_unreachable_bot_api_is_one_line_after_the_retries(bot) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = run_cli(bot.env(TELEGRAM_API_BASE_URL=unreachable, RETRY_WAIT_SCALE="0"), "run")
    assert_one_line_error(result, "not reachable", "TELEGRAM_API_BASE_URL")
    assert result.stdout.count("retrying in") == 4  # five tries, four waits between them


def test_rejected_token_is_one_line_naming_the_token_setting(bot) -> None:
    with FakeTelegram("42:a-different-bot-token-abcdefghijklmnop") as other:
        env = bot.env(TELEGRAM_API_BASE_URL=other.base_url)  # our TEST_TOKEN is not this server's
        line = assert_one_line_error(run_cli(env, "run"), "TELEGRAM_BOT_TOKEN was rejected", "401")
        doctor = run_cli(env, "doctor")
    assert doctor.returncode == 1 and line.removeprefix("error: ").split(":")[0] in doctor.stdout
    assert find_secret_lines(doctor.stdout + doctor.stderr) == []


def test_wrong_base_url_is_not_called_a_rejected_token(bot, fake_telegram) -> None:
    result = run_cli(bot.env(TELEGRAM_API_BASE_URL=f"{fake_telegram.base_url}/v2"), "run")
    line = assert_one_line_error(result, "404", "check TELEGRAM_API_BASE_URL")
    assert "rejected" not in line


def test_get_me_that_is_not_a_bot_gets_the_same_line_from_run_and_doctor(bot) -> None:
    with StubBotApi({key: value for key, value in BOT_USER.items() if key != "is_bot"}) as stub:
        env = bot.env(TELEGRAM_API_BASE_URL=stub.root_url)
        line = assert_one_line_error(run_cli(env, "run"), "`is_bot` is missing")
        doctor = run_cli(env, "doctor")
    problem = line.removeprefix("error: ").split(": check")[0]
    assert doctor.returncode == 1
    assert f"[FAIL] telegram: {problem}" in doctor.stdout, doctor.stdout
    assert "Traceback" not in doctor.stdout + doctor.stderr
    assert find_secret_lines(doctor.stdout + doctor.stderr) == []


def test_polling_backs_off_when_get_updates_answers_at_once(bot) -> None:
    with StubBotApi(BOT_USER) as stub:
        proc = bot(wait=False, TELEGRAM_API_BASE_URL=stub.root_url)
        deadline = time.monotonic() + 20
        while not stub.times("getUpdates"):
            assert proc.alive() and time.monotonic() < deadline, proc.tail()
            time.sleep(0.05)
        first = stub.times("getUpdates")[0]
        time.sleep(3.0)  # a window to count calls in, not a wait for something to happen
        polls = [at for at in stub.times("getUpdates") if at - first <= 3.0]
        assert proc.stop() == 0
    # Without pacing this server is asked thousands of times in 3 s; long polling would ask 3 times.
    assert 2 <= len(polls) < 30, len(polls)


def test_a_library_error_that_names_the_token_is_redacted_on_the_way_out(bot) -> None:
    """The last resort (bot/__main__.py): whatever a command lets escape, PTB's InvalidToken
    message ("The token `…` was rejected") included, reaches the terminal without the token.
    Every known path now ends in a one-line error of ours, so the escape is provoked on purpose:
    the real `main` runs a command that prints the token, warns with it and raises InvalidToken."""
    script = (
        "import sys, warnings, bot.__main__ as cli\n"
        "from telegram.error import InvalidToken\n"
        "def escape(args, settings):\n"
        "    token = settings.telegram_bot_token.get_secret_value()\n"
        "    print('printed', token, end='')\n"
        "    print(' (split across writes)')\n"
        "    warnings.warn(f'warned {token}')\n"
        "    raise InvalidToken(f'The token `{token}` was rejected by the server.')\n"
        "cli._dispatch = escape\n"
        "sys.exit(cli.main(['doctor']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=bot_env(bot.env()),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "InvalidToken" in result.stderr and "was rejected" in result.stderr  # the traceback is shown…
    assert "printed" in result.stdout and "[REDACTED]" in output  # …and what was printed, redacted
    assert find_secret_lines(output) == []
