"""`python -m bot dlq list|show|replay|discard`: the operator's dead-letter queue from a shell.

Replay runs the turn through the whole pipeline and delivers the answer through the Bot API,
so it works from a one-off dyno while the bot runs (SQLite WAL allows both; claiming an entry
is atomic, so a replay never runs twice).
"""

from __future__ import annotations

import json
import sys

from config.settings import Settings, require_token
from core.failures.dlq import DlqRow
from core.logs import configure_logging
from core.services import StorageUnavailable, open_services


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
        services = open_services(settings)
    except StorageUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        queue = services.dlq
        if action == "list":
            rows = queue.list(None if status == "all" else status, limit=200)
            if as_json:
                for row in rows:
                    print(json.dumps(_as_dict(row), ensure_ascii=False))
            elif not rows:
                print(f"no {status} entries ({queue.evicted()} evicted so far)")
            else:
                for r in rows:
                    print(f"#{r.id} [{r.status}] {r.error_kind} chat={r.chat_id} user={r.user_id} "
                          f"last={r.last_failed_at} ref={r.ref} text={r.inbound.text[:60]!r}")
            return 0
        if action == "show":
            row = queue.get(int(entry or 0))
            if row is None:
                print(f"no DLQ entry {entry}", file=sys.stderr)
                return 1
            print(json.dumps(_as_dict(row), indent=2, ensure_ascii=False))
            return 0
        if action == "discard":
            ok = queue.discard(int(entry or 0), now=services.clock.iso())
            print(f"discarded #{entry}" if ok else f"#{entry} is not pending")
            return 0 if ok else 1
        return await _replay(settings, services, entry or "")
    finally:
        await services.close()


async def _replay(settings: Settings, services, entry: str) -> int:  # noqa: ANN001
    from bot.app import build_application
    from bot.runtime import Runtime

    application = build_application(settings, require_token(settings), webhook=True)
    await application.initialize()
    try:
        runtime = Runtime(services, application.bot)
        runtime.set_identity(application.bot.id, application.bot.username)
        results = await runtime.replay_all() if entry == "all" else [await runtime.replay(int(entry))]
        for line in results or ["nothing pending"]:
            print(line)
        return 0 if all("failed" not in r and "not pending" not in r for r in results) else 1
    finally:
        await application.shutdown()
