"""The start-up pieces without a process: getMe judged, idle polling paced, output redacted,
and what `doctor` says about who may chat."""

from __future__ import annotations

import asyncio
import io

import pytest

from bot.__main__ import RedactingStream
from bot.doctor import check_access
from bot.polling import IDLE_MAX_WAIT_S, IdlePacer
from bot.startup import judge_get_me, wait_for_bot_api
from config.settings import Settings
from core.logs import redactor

ROOT = "https://api.example.org"
BOT = {"id": 1, "is_bot": True, "first_name": "B", "username": "b_bot"}


@pytest.mark.parametrize(("status", "body", "needle", "retryable"), [
    (401, {"ok": False, "description": "Unauthorized"}, "TELEGRAM_BOT_TOKEN was rejected", False),
    (404, {"ok": False, "description": "Not Found"}, "404", False),
    (404, None, "404", False),
    (502, None, "502", True),
    (200, {"ok": True, "result": {k: v for k, v in BOT.items() if k != "is_bot"}}, "`is_bot` is missing", False),
    (200, {"ok": True, "result": {**BOT, "is_bot": False}}, "not a bot account", False),
    (200, {"ok": True, "result": {k: v for k, v in BOT.items() if k != "username"}}, "no `username`", False),
    (200, {"ok": True, "result": []}, "not a User", False),
    (200, "<html>", "not a Telegram Bot API", False),
    (403, {"ok": False, "description": "Forbidden"}, "refused getMe (403: Forbidden)", False),
])
def test_get_me_answers_are_told_apart(status: int, body: object, needle: str, retryable: bool) -> None:
    check = judge_get_me(ROOT, status, body)
    assert not check.ok and check.retryable is retryable
    assert needle in check.line() and "\n" not in check.line()
    if status == 404:
        assert "TELEGRAM_API_BASE_URL" in check.fix and "rejected" not in check.line()


def test_a_bot_answer_passes() -> None:
    check = judge_get_me(ROOT, 200, {"ok": True, "result": BOT})
    assert check.ok and check.me["username"] == "b_bot"


async def test_a_stop_during_the_retries_returns_at_once() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = asyncio.get_running_loop().time()
    # Port 9 (discard) on loopback refuses at once: every try fails and the waits are 2, 4, 8 s.
    assert await wait_for_bot_api("http://127.0.0.1:9", "1:x", stop) is None
    assert asyncio.get_running_loop().time() - started < 1.0


def test_idle_pacer_backs_off_on_instant_empty_answers_and_resets_on_updates() -> None:
    pacer = IdlePacer()
    waits = [pacer.next_wait_s(updates=0, elapsed_s=0.001, requested_timeout_s=10) for _ in range(8)]
    assert waits[0] > 0 and waits == sorted(waits) and waits[-1] == IDLE_MAX_WAIT_S
    assert pacer.next_wait_s(updates=1, elapsed_s=0.001, requested_timeout_s=10) == 0.0
    assert pacer.next_wait_s(updates=0, elapsed_s=0.001, requested_timeout_s=10) == waits[0]


@pytest.mark.parametrize(("elapsed_s", "requested_timeout_s"), [(10.0, 10), (1.0, 10), (0.6, 1)])
def test_idle_pacer_leaves_working_long_polls_alone(elapsed_s: float, requested_timeout_s: float) -> None:
    # A long poll that ran its course, or one a server cut short after a second, is not a hot loop.
    assert IdlePacer().next_wait_s(updates=0, elapsed_s=elapsed_s, requested_timeout_s=requested_timeout_s) == 0.0


def test_redacting_stream_finds_a_secret_split_across_writes() -> None:
    secret = "123456:AAE-secret-half-abcdefghijkl"
    out = io.StringIO()
    stream = RedactingStream(out, redactor([secret]))
    stream.write("token " + secret[:10])
    stream.write(secret[10:] + " was rejected\nnext ")
    stream.flush()
    assert secret not in out.getvalue()
    assert out.getvalue() == "token [REDACTED] was rejected\nnext "


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_doctor_flags_a_group_id_as_operator() -> None:
    [check] = check_access(settings(operator_chat_id=-1001234, allowed_user_ids="5"))
    assert not check.ok and not check.warning
    assert "group" in check.detail and "user id" in check.fix


def test_doctor_says_nobody_can_chat_without_operator_or_allowed_users() -> None:
    [check] = check_access(settings())
    assert check.warning and "nobody can chat" in check.detail
    assert "only the operator" not in check.detail


def test_doctor_says_only_the_operator_may_chat_when_that_is_true() -> None:
    [check] = check_access(settings(operator_chat_id=42, access_policy="allowlist"))
    assert check.warning and "only the operator may chat" in check.detail


def test_doctor_names_pairing_the_default_with_an_operator() -> None:
    [check] = check_access(settings(operator_chat_id=42))
    assert check.ok and not check.warning and "pairing" in check.detail
