"""Reaching the Bot API at start: one getMe check shared by `run` and `doctor`.

Why our own getMe before PTB's `Application.initialize()`: PTB raises `InvalidToken` for a 401
(a wrong token) and a 404 (a wrong TELEGRAM_API_BASE_URL, or a malformed token) alike, with the
token in its message, and an answer that is not a bot user (a stand-in without `is_bot`) ends
in a TypeError traceback. Looking at the HTTP status and the body ourselves tells the operator
which setting to fix, in one line, and `doctor` says exactly what `run` would.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

from core.control import until_stopped
from core.failures.backoff_schedule import ceiling_wait_s

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 10.0
START_ATTEMPTS = 5
START_BASE_WAIT_S = 2.0  # waits 2, 4, 8, 10 s: about 25 s for a PaaS network to come up
START_MAX_WAIT_S = 10.0


@dataclass(frozen=True)
class MeCheck:
    """What getMe said. `retryable` means "not reachable yet" (network error, 5xx)."""

    ok: bool
    problem: str = ""
    fix: str = ""
    retryable: bool = False
    me: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """The one-line error `run` prints (and `doctor` shows as detail + fix)."""
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


class StartupFailed(Exception):
    """The Bot API cannot be used with these settings; the message is one line, without secrets."""


def me_problem(result: object) -> str:
    """Why a getMe `result` is not a bot PTB (and the gateway) can run as; "" when it is one."""
    if not isinstance(result, dict):
        return f"the result is {type(result).__name__}, not a User object"
    if not isinstance(result.get("id"), int) or isinstance(result.get("id"), bool):
        return "the User has no numeric `id`"
    if result.get("is_bot") is not True:
        return "`is_bot` is missing" if "is_bot" not in result else "`is_bot` is not true (not a bot account)"
    if not isinstance(result.get("first_name"), str):
        return "the User has no `first_name`"
    if not isinstance(result.get("username"), str) or not result["username"]:
        return "the bot has no `username`"
    return ""


def judge_get_me(root: str, status: int, body: object) -> MeCheck:
    """Classify one getMe answer (HTTP status and parsed JSON body)."""
    url_fix = f"check TELEGRAM_API_BASE_URL (now {root}): it must be the Bot API root, e.g. https://api.telegram.org"
    if status >= 500:
        return MeCheck(False, f"the Bot API at {root} answered getMe with {status}", url_fix, retryable=True)
    if status == 401:
        return MeCheck(False, "TELEGRAM_BOT_TOKEN was rejected by the Bot API (401 Unauthorized)",
                       "check the token with @BotFather")
    if status == 404:
        return MeCheck(False, f"the Bot API at {root} answered getMe with 404 Not Found",
                       f"{url_fix}, without /bot…; and that TELEGRAM_BOT_TOKEN is the whole token from @BotFather")
    if not isinstance(body, dict) or "ok" not in body:
        return MeCheck(False, f"the server at {root} is not a Telegram Bot API (getMe answered {status} "
                       "without the Bot API's JSON)", url_fix)
    if status != 200 or body.get("ok") is not True:
        said = f": {str(body.get('description'))[:200]}" if body.get("description") else ""
        return MeCheck(False, f"the Bot API at {root} refused getMe ({status}{said})", url_fix)
    problem = me_problem(body.get("result"))
    if problem:
        return MeCheck(False, f"the Bot API at {root} answered getMe with something that is not a bot ({problem})",
                       f"{url_fix} serving the Telegram Bot API")
    return MeCheck(True, me=body["result"])


async def check_get_me(root: str, token: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> MeCheck:
    """GET {root}/bot{token}/getMe and judge the answer; network trouble is retryable."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(f"{root}/bot{token}/getMe")
    except httpx.HTTPError as error:  # the type only: httpx messages can carry the URL, hence the token
        return MeCheck(False, f"the Bot API at {root} is not reachable ({type(error).__name__})",
                       "check TELEGRAM_API_BASE_URL and the network", retryable=True)
    try:
        body: object = response.json()
    except ValueError:
        body = None
    return judge_get_me(root, response.status_code, body)


async def wait_for_bot_api(root: str, token: str, stop: asyncio.Event, *, wait_scale: float = 1.0) -> MeCheck | None:
    """getMe until it answers, START_ATTEMPTS times at most (a PaaS may start us before its network
    is up); None when `stop` is set meanwhile (SIGTERM, Ctrl-C), so a stop is obeyed at once.
    Raises StartupFailed when the answer says the settings are wrong or the tries run out.
    `wait_scale` multiplies the waits (the RETRY_WAIT_SCALE test hook)."""
    for attempt in range(1, START_ATTEMPTS + 1):
        check = await until_stopped(stop, check_get_me(root, token))
        if check is None:
            return None
        if check.ok:
            return check
        if not check.retryable or attempt == START_ATTEMPTS:
            raise StartupFailed(check.line())
        wait_s = wait_scale * ceiling_wait_s(attempt=attempt, base_wait_s=START_BASE_WAIT_S,
                                             max_wait_s=START_MAX_WAIT_S)
        log.warning("%s; retrying in %.0f s", check.problem, wait_s)
        if await until_stopped(stop, asyncio.sleep(wait_s, result=True)) is None:
            return None
    raise AssertionError("unreachable: the last attempt returns or raises")
