"""`python -m bot dlq list|show|replay|discard`: the operator's dead-letter queue from a shell.

Replay runs the turn through the whole pipeline and delivers the answer through the Bot API,
so it works from a one-off dyno while the bot runs (SQLite WAL allows both; claiming an entry
is atomic, so a replay never runs twice). An entry left by `python -m bot console` is replayed
here, its answer printed: console turns never reach Telegram. Errors are one line on stderr
(exit 1), never a traceback, and never the token (PTB's messages can carry it).
"""

from __future__ import annotations

import json
import sys

from telegram.error import InvalidToken, TelegramError
from telegram.ext import Application

from bot.channel import TelegramChannel
from bot.console import ConsoleChannel
from config.settings import Settings, require_token
from core.failures.dlq import DlqRow
from core.failures.parsing import redact
from core.logs import configure_logging
from core.pipeline import Pipeline
from core.ports import Channel
from core.replay import Origin, ReplayResult, entry_origin, pending_entries, replay_entry, replay_pending
from core.services import Services, StorageUnavailable, open_services


def _as_dict(row: DlqRow) -> dict:
    return {"id": row.id, "status": row.status, "trace_id": row.trace_id, "ref": row.ref, "chat_id": row.chat_id,
            "user_id": row.user_id, "error_kind": row.error_kind, "error_message": row.error_message,
            "first_failed_at": row.first_failed_at, "last_failed_at": row.last_failed_at,
            "replayable": row.replayable, "attempts": row.attempts, "text": row.inbound.text}


async def run_dlq(settings: Settings, action: str, entry: str | None, *, as_json: bool, status: str) -> int:
    configure_logging(level="WARNING", fmt=settings.log_format, secrets=settings.secrets())
    if action in ("show", "discard") and (entry is None or not entry.isdigit()):
        print(f"usage: python -m bot dlq {action} ID", file=sys.stderr)
        return 2
    if action == "replay" and (entry is None or not (entry.isdigit() or entry == "all")):
        print("usage: python -m bot dlq replay ID|all", file=sys.stderr)
        return 2
    try:
        services = await open_services(settings)
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        queue = services.dlq
        if action == "list":
            rows = await queue.list(None if status == "all" else status, limit=200)
            if as_json:
                for row in rows:
                    print(json.dumps(_as_dict(row), ensure_ascii=False))
            elif not rows:
                print(f"no {status} entries ({await queue.evicted()} evicted so far)")
            else:
                for r in rows:
                    print(f"#{r.id} [{r.status}] {r.error_kind} chat={r.chat_id} user={r.user_id} "
                          f"last={r.last_failed_at} ref={r.ref} text={r.inbound.text[:60]!r}")
            return 0
        if action == "show":
            row = await queue.get(int(entry or 0))
            if row is None:
                print(f"no DLQ entry {entry}", file=sys.stderr)
                return 1
            print(json.dumps(_as_dict(row), indent=2, ensure_ascii=False))
            return 0
        if action == "discard":
            ok = await queue.discard(int(entry or 0), now=services.clock.iso())
            print(f"discarded #{entry}" if ok else f"#{entry} is not pending")
            return 0 if ok else 1
        return await _replay(settings, services, entry or "")
    finally:
        await services.close()


async def _replay(settings: Settings, services: Services, entry: str) -> int:
    """Replay one entry or all pending ones; each to where it came from (Telegram or this terminal)."""
    pipeline = Pipeline(services)
    if entry == "all":
        origins = [o for o in ("console", "telegram") if await pending_entries(services, origin=o, limit=1)]
    else:
        row = await services.dlq.get(int(entry))
        origins = [entry_origin(row)] if row is not None and row.status == "pending" else []
        if not origins:  # not found or not pending: said without the Bot API (the channel is not used)
            result = await replay_entry(pipeline, services, int(entry), ConsoleChannel(), origin="console")
            print(result.describe())
            return 1
    results: list[ReplayResult] = []
    for origin in origins:
        ran = await _replay_to(settings, services, pipeline, entry, origin)
        if ran is None:
            return 1
        results += ran
    for result in results:
        print(result.describe())
    if not results:
        print("nothing pending")
    return 0 if all(result.ok for result in results) else 1


async def _replay_to(settings: Settings, services: Services, pipeline: Pipeline, entry: str,
                     origin: Origin) -> list[ReplayResult] | None:
    """The entries of one origin; None (after one line on stderr) when the Bot API cannot be used."""
    if origin == "console":
        channel = ConsoleChannel()
        return await _run(pipeline, services, channel, entry, origin)
    from bot.app import build_application

    application = build_application(settings, require_token(settings), webhook=True)
    if not await _initialize(application, settings):
        return None
    try:
        channel = TelegramChannel(application.bot, tracer=services.tracer)
        return await _run(pipeline, services, channel, entry, origin)
    finally:
        await application.shutdown()


async def _run(pipeline: Pipeline, services: Services, channel: Channel, entry: str,
               origin: Origin) -> list[ReplayResult]:
    if entry == "all":
        return await replay_pending(pipeline, services, channel, origin=origin)
    return [await replay_entry(pipeline, services, int(entry), channel, origin=origin)]


async def _initialize(application: Application, settings: Settings) -> bool:
    """getMe once; False after one line on stderr (PTB's own message names the token: not shown)."""
    root = settings.telegram_api_base_url
    try:
        await application.initialize()
        return True
    except InvalidToken:
        problem = (f"the Bot API at {root} rejected TELEGRAM_BOT_TOKEN (or that URL is not a Bot API): "
                   "check both, or run `python -m bot doctor`")
    except TelegramError as error:
        detail = redact(str(error), secrets=settings.secrets())[:200]
        problem = (f"the Bot API at {root} is not reachable ({type(error).__name__}: {detail}): "
                   "check TELEGRAM_API_BASE_URL and the network")
    print(f"error: {problem}; nothing was replayed", file=sys.stderr)
    return False
