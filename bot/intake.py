"""Intake: the inbox journal and PTB's update queue.

Journal first, then work: an update is written to the inbox journal (keyed by update_id)
before anything else, so a redelivery is dropped and a crash mid-turn is resumed at start.
Journaling happens when the update enters PTB's update queue (`await JournalingQueue.put`: PTB's
Updater and webhook handler, and our webhook, all await `put`; `put_nowait` does not journal): the
poller only confirms an update to Telegram (the next getUpdates offset) after putting it
there, and the webhook answers 200 only after it, so an update is never acknowledged
before it is on disk. Journaled updates are marked `pre_accepted` for the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Protocol

import psycopg
from telegram import Bot, Update
from telegram.error import NetworkError

from bot.handlers import Parsed, journal_raw, parse_update, update_ids
from bot.routing import Router
from bot.storage_alarm import StorageAlarm
from core import failpoints
from core.services import Services
from core.store.interfaces import JournalEntry

log = logging.getLogger(__name__)
RECOVER_LIMIT = 1000


class Intake:
    """Journals updates and hands them to the router; resumes what a crash left unfinished."""

    def __init__(self, services: Services, bot: Bot, router: Router) -> None:
        self.services, self.bot, self.router = services, bot, router

    async def accept(self, update: Update) -> bool:
        """Journal an update before anything else; False for a duplicate (already journaled)."""
        chat_id, user_id = update_ids(update)
        failpoints.hit("journal.before")
        accepted = await self.router.instances.journaled(update.update_id, lambda: self.services.journal.accept(
            update_id=update.update_id, chat_id=chat_id, user_id=user_id, kind="update", raw=journal_raw(update),
            trace_id=None, now=self.services.clock.iso()))  # with its claim, when instances share the database
        if accepted:
            self.router.pre_accepted.add(update.update_id)
            failpoints.hit("journal.after")
        return accepted

    async def process_raw(self, data: object) -> str:
        """One raw update body (what the webhook receives): parse, journal, process; never raises.

        Returns the outcome: `rejected` (not an update: nothing to key it by, nothing kept),
        `malformed` (kept in the journal as failed, with why), `duplicate`, `ignored` (the journal
        says why), or the turn's own outcome (`replied`, `failed`, `dlq`, `refused`, ...)."""
        parsed = parse_update(data, self.bot)
        if parsed.update is None:
            return await self.record_unparsable(parsed)
        update = parsed.update
        try:
            if not await self.accept(update):
                return "duplicate"
            return await self.router.process_update(update)
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # noqa: BLE001 - process_update ends its own failures; a last resort
            log.exception("update %s failed at intake", update.update_id)
            with contextlib.suppress(Exception):
                await self.services.journal.mark(update.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"{type(failure).__name__} at intake"[:500])
            return "error"

    async def record_unparsable(self, parsed: Parsed) -> str:
        """A body that is not a usable update: kept in the journal (failed) when it has an id."""
        if parsed.update_id is None:
            log.warning("rejected a body that is not a Telegram update: %s", parsed.problem)
            return "rejected"
        log.warning("update %s is malformed: %s", parsed.update_id, parsed.problem)
        journal, now = self.services.journal, self.services.clock.iso()
        try:
            if not await journal.accept(update_id=parsed.update_id, chat_id=None, user_id=None, kind="update",
                                  raw=parsed.data or {"update_id": parsed.update_id}, trace_id=None, now=now):
                return "duplicate"
            await journal.mark(parsed.update_id, "failed", now=now, error=parsed.problem[:500])
        except Exception:  # noqa: BLE001 - a body we cannot even store is rejected, loudly
            log.exception("could not journal malformed update %s", parsed.update_id)
            return "rejected"
        return "malformed"

    async def recover(self) -> list[Update]:
        """Updates a crash (or a storage failure) left in received/processing, except those queued
        or running now: processed again (documented at-least-once). One process only: with
        instances sharing a database the sweeper resumes (bot/instances.py)."""
        updates = await self.resume(await self.services.journal.unfinished(limit=RECOVER_LIMIT))
        if updates:
            log.info("resuming %d update(s) left unfinished by the previous run", len(updates))
        return updates

    async def resume(self, entries: list[JournalEntry]) -> list[Update]:
        """Journal rows to run again (left unfinished, or taken over from a dead instance), except
        those queued or running here now; marked pre-accepted for the router."""
        updates = []
        router = self.router
        busy = router.pre_accepted | router.in_flight
        for entry in entries:
            if entry.update_id in busy:
                continue
            try:
                update = Update.de_json(entry.raw, self.bot)
            except Exception as error:  # noqa: BLE001 - a row we cannot parse is marked, not retried forever
                await self.services.journal.mark(entry.update_id, "failed", now=self.services.clock.iso(),
                                           error=f"unparsable on recovery: {type(error).__name__}")
                await router.instances.finished(entry.update_id)
                continue
            router.pre_accepted.add(entry.update_id)
            updates.append(update)
        return updates


class Journaling(Protocol):
    """What the queue needs: journal an update, and where to say storage failed (bot.runtime.Runtime)."""

    pre_accepted: set[int]
    storage_alarm: StorageAlarm

    async def accept(self, update: Update) -> bool: ...


class JournalingQueue(asyncio.Queue):
    """PTB's update queue, journaling each update as it is put (before Telegram is told)."""

    def __init__(self) -> None:
        super().__init__()
        self.runtime: Journaling | None = None  # set once the runtime exists (bot.app)

    async def put(self, item) -> None:  # noqa: ANN001 - PTB also puts control objects
        # Journaling awaits the database, so it happens here, not in put_nowait: PTB's poller and
        # webhook handler (and bot/webhook.py) all `await queue.put(update)`.
        if await self._admit(item):
            await super().put(item)

    def put_recovered(self, update: Update) -> None:
        """An update already journaled by a previous run: processed again without a new row."""
        assert self.runtime is not None
        self.runtime.pre_accepted.add(update.update_id)
        super().put_nowait(update)

    async def _admit(self, item) -> bool:  # noqa: ANN001
        if self.runtime is None or not isinstance(item, Update):
            return True
        try:
            accepted = await self.runtime.accept(item)
        except (sqlite3.Error, psycopg.Error) as error:
            # Not journaled, so not acknowledged: PTB's poller retries getUpdates with the same
            # offset (Telegram redelivers), the webhook answers 503 (Telegram retries).
            log.error("cannot journal update %s (%s); it will be redelivered", item.update_id, error)
            await self.runtime.storage_alarm.failed(item, error)
            raise NetworkError(f"journal unavailable: {error}") from None
        await self.runtime.storage_alarm.recovered()
        return accepted
