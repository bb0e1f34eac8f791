"""When storage refuses writes (disk full, read-only, I/O error, locked), nothing is lost, and
people are told.

- An update that cannot be journaled is not acknowledged: Telegram keeps it and redelivers it
  (the poller retries getUpdates from the same offset; the webhook answers with an error).
- A turn whose write fails midway ends "deferred" (core/pipeline/failure.py): its journal row stays
  unfinished.
- Either way the sender hears once per update that the message waits (only a person the bot
  would answer), and the operator hears it directly through the Bot API, at most once per
  ESCALATION_COOLDOWN_SECONDS: the outbox and the escalator live in the same database.
- Once a second (the outbox loop) `probe()` checks that DATA_DIR has MIN_FREE_BYTES free and
  tries one small write; when both pass, the operator is told, and the journal's unfinished
  updates that are neither queued nor running are queued again (`resume`), so the deferred
  messages are answered without a restart. (A write alone is not proof: SQLite reuses its
  write-ahead log, so a small commit can succeed on a full disk.) Senders already told are
  remembered across recoveries, and the operator cooldown is not reset by one, so a disk that
  flaps cannot turn into a stream of messages.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
from telegram import Update

from bot.handlers import BotIdentity, route, update_ids
from core.failures.parsing import redact
from core.failures.storage_errors import is_storage_failure, storage_reason
from core.failures.taxonomy import TAXONOMY, Kind
from core.services import Services
from core.store import bump_counter

log = logging.getLogger(__name__)
REMEMBERED_UPDATES = 10_000
MIN_FREE_BYTES = 1024 * 1024
INFO = TAXONOMY[Kind.storage_unavailable]
Send = Callable[[int, str], None]  # fire and forget: a plain message straight through the Bot API


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class StorageAlarm:
    """Whether storage refuses writes, who was told, and the probe that notices it works again.

    `send` delivers a plain message without the outbox (which lives in the failing database);
    `free_bytes` and `write_probe` are the two checks of `probe`, replaceable in tests."""

    def __init__(self, services: Services, *, send: Send, identity: BotIdentity,
                 free_bytes: Callable[[Path], int] = free_bytes,
                 write_probe: Callable[[], Awaitable[None]] | None = None) -> None:
        self.services = services
        self.send = send
        self.identity = identity
        self.free_bytes = free_bytes
        self.write_probe = write_probe or self._write_probe
        self.failing_since: float | None = None
        self.noted: dict[int, None] = {}  # update ids whose sender was told (oldest first)
        self.alerted_at = float("-inf")
        self.alerted_this_time = False
        self.resume: Callable[[], Awaitable[int]] | None = None  # queues unfinished updates again; set by bot.app

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def note(self, update_id: int, reason: str) -> bool:
        """Storage failed for this update; alert the operator (with a cooldown). True the first
        time this update is noted: its sender has not been told yet."""
        services = self.services
        now = services.clock.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        operator = services.settings.operator_chat_id
        if operator is not None and now - self.alerted_at >= services.settings.escalation_cooldown_seconds:
            self.alerted_at, self.alerted_this_time = now, True
            reason = redact(reason, secrets=services.settings.secrets())
            self.send(operator, f"🚨 storage: DATA_DIR={services.settings.data_dir} refuses writes ({reason}). "
                                "Incoming messages wait, nothing is lost; they are answered once it takes writes "
                                f"again. To do: {INFO.action}.")
        if update_id in self.noted:
            return False
        self.noted[update_id] = None
        if len(self.noted) > REMEMBERED_UPDATES:
            del self.noted[next(iter(self.noted))]
        return True

    async def failed(self, update: Update, error: BaseException) -> None:
        """An update could not be journaled or failed outside its turn because of storage."""
        if not self.note(update.update_id, storage_reason(error)):
            return
        chat_id, user_id = update_ids(update)
        routed = route(update, bot_id=self.identity.bot_id, bot_username=self.identity.username)
        if chat_id is not None and user_id is not None and routed.kind in ("message", "command") \
                and await self.services.is_allowed(user_id):
            self.send(chat_id, INFO.user_message)

    async def probe(self) -> bool:
        """While failing: check free space and try one small write; on success, recover. True
        when storage works."""
        if self.failing_since is None:
            return True
        try:
            if self.free_bytes(self.services.settings.data_dir) < MIN_FREE_BYTES:
                return False
            await self.write_probe()
        except (sqlite3.Error, psycopg.Error, OSError) as error:
            if not is_storage_failure(error):
                raise
            return False
        await self.recovered()
        return True

    async def _write_probe(self) -> None:
        async with self.services.db.transaction():
            await bump_counter(self.services.db, "storage_probe")

    async def recovered(self) -> None:
        if self.failing_since is None:
            return
        services = self.services
        waited = services.clock.monotonic() - self.failing_since
        told, self.failing_since, self.alerted_this_time = self.alerted_this_time, None, False
        queued = await self.resume() if self.resume is not None else 0
        log.warning("storage takes writes again after %.0f s; %d unfinished update(s) queued again", waited,
                    queued)
        if told and services.settings.operator_chat_id is not None:
            self.send(services.settings.operator_chat_id,
                      f"✅ storage: writes work again after {waited:.0f} s; the messages that waited are being "
                      "answered now.")
