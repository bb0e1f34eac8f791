"""Background work while the bot runs: the outbox loop, hourly maintenance, and the automatic
replay of dead letters an outage left (DLQ_AUTO_REPLAY)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from bot.instances import Instances
from bot.storage_alarm import StorageAlarm
from core.failures.escalation import drain_outbox
from core.failures.undelivered import record_blocked
from core.pipeline import Pipeline
from core.ports import Channel
from core.replay import REPLAY_PACE_S, ReplayStatus, replay_pending, replayable_entries
from core.services import Services

log = logging.getLogger(__name__)
OUTBOX_POLL_S = 1.0
MAINTAIN_EVERY_S = 3600.0
KEEP_FINISHED_DAYS = 7
AUTO_REPLAY_ROUNDS = 5
OUTBOX_BASE_WAIT_S = 2.0  # first retry of a refused delivery; doubles per attempt ...
OUTBOX_MAX_WAIT_S = 60.0  # ... up to this (both scaled by RETRY_WAIT_SCALE in tests)
# With instances sharing a database the leader's own circuit may never have opened while another
# instance's outage filled the DLQ: the leader looks for replayable outage entries this often.
SHARED_REPLAY_CHECK_S = 60.0


class BackgroundTasks:
    """Tasks started on the side (notices, replays), kept referenced until done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)


class Loops:
    """The outbox loop and what it drives once a second: maintenance and the automatic replay.
    With instances sharing a database, only the leader runs them (bot/instances.py)."""

    def __init__(self, services: Services, pipeline: Pipeline, channel: Channel, *, alarm: StorageAlarm,
                 tasks: BackgroundTasks, instances: Instances | None = None) -> None:
        self.services, self.pipeline, self.channel = services, pipeline, channel
        self.alarm, self.tasks = alarm, tasks
        self.instances = instances or Instances.local()
        self._leading = False
        self._replay_checked_at = float("-inf")
        self._maintained_at = float("-inf")
        self._replaying = False
        self._replay_wanted = False

    async def outbox_loop(self, stop: asyncio.Event) -> None:
        """Deliver alerts and kept replies, retrying until Telegram takes them; and, once a
        second, see whether the dead-letter queue is due a replay (see `replay_if_due`)."""
        services = self.services
        scale = max(services.settings.retry_wait_scale, 0.05)
        while not stop.is_set():
            try:
                if await self.alarm.probe() and await self._lead():  # storage works, and this instance leads
                    await drain_outbox(services.outbox, self.channel, now=services.clock.now,
                                       base_wait_s=OUTBOX_BASE_WAIT_S * scale, max_wait_s=OUTBOX_MAX_WAIT_S * scale,
                                       chat_gone=services.chats.is_blocked,
                                       on_chat_gone=lambda chat_id, reason: record_blocked(services, chat_id, reason))
                    await self.replay_if_due(at_start=self._took_over())
                    await self.maintain()
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("outbox round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OUTBOX_POLL_S)

    async def _lead(self) -> bool:
        leading = await self.instances.leads()
        if not leading:
            self._leading = False
        return leading

    def _took_over(self) -> bool:
        """True in the first round this instance leads (at start on one process: entries a restart
        left behind), and, with instances sharing the database, every SHARED_REPLAY_CHECK_S."""
        now = self.services.clock.monotonic()
        first, self._leading = not self._leading, True
        if first or (self.instances.shared and now - self._replay_checked_at >= SHARED_REPLAY_CHECK_S):
            self._replay_checked_at = now
            return True
        return False

    async def maintain(self) -> None:
        """Hourly: drop finished journal and outbox rows older than KEEP_FINISHED_DAYS. Telegram
        redelivers for at most a day, so a week of update ids is ample for deduplication, and
        gateway.db stays bounded however long the bot runs."""
        now = self.services.clock.monotonic()
        if now - self._maintained_at < MAINTAIN_EVERY_S:
            return
        self._maintained_at = now
        before = (self.services.clock.now() - timedelta(days=KEEP_FINISHED_DAYS)).isoformat(timespec="milliseconds")
        journal = await self.services.journal.prune(before=before)
        outbox = await self.services.outbox.prune(before=before)
        await self.services.access.records.prune(before=before)  # finished or expired pairing codes
        await self.instances.coordination.prune()  # claims a failed release left behind
        if journal or outbox:
            log.info("pruned %d journal and %d outbox rows older than %d days", journal, outbox, KEEP_FINISHED_DAYS)

    async def replay_if_due(self, *, at_start: bool = False) -> None:
        """Start the automatic replay of outage entries when it is due without a user's help:
        at start (entries a restart left behind), when a circuit's reset time has passed (the
        oldest entry's replay is the half-open probe: the circuit closes without waiting for
        traffic), or when a circuit closed while a replay was already running."""
        services = self.services
        if not services.settings.dlq_auto_replay or self._replaying:
            return
        now_s = services.clock.monotonic()
        probe_due = any(b.state == "open" and b.snapshot(now_s=now_s).retry_in_s == 0 for b in services.breakers.all())
        if not (at_start or probe_due or self._replay_wanted):
            return
        if await replayable_entries(services, limit=1, origin="telegram"):
            self.schedule_auto_replay()
        else:
            self._replay_wanted = False

    def provider_answered(self) -> None:
        """An LLM call succeeded: outage entries left by failures that did not open the circuit
        can be answered now (checked by the next `replay_if_due`, not on the turn's path)."""
        if self.services.settings.dlq_auto_replay:
            self._replay_wanted = True

    def circuit_closed(self) -> bool:
        """A replay that failed on a one-off fault (circuit still closed) should not stop the rest."""
        models = self.services.models
        return self.services.breakers.get(models.endpoint(models.default).base_url, models.default).state == "closed"

    def schedule_auto_replay(self) -> None:
        """Replay outage entries in the background, one run at a time (DLQ_AUTO_REPLAY). A
        circuit that closes during a run is remembered and gets a run of its own after it.
        Only Telegram's entries: a console turn is never answered in a Telegram chat. With
        instances sharing a database only the leader replays (it looks every SHARED_REPLAY_CHECK_S)."""
        if not self.services.settings.dlq_auto_replay or (self.instances.shared and not self._leading):
            return
        if self._replaying:
            self._replay_wanted = True
            return
        self._replaying, self._replay_wanted = True, False  # set now: two calls never start two runs
        self.tasks.spawn(self._auto_replay())

    async def _auto_replay(self) -> None:
        replayed = 0
        pace_s = REPLAY_PACE_S * self.services.settings.retry_wait_scale
        try:
            await asyncio.sleep(0)  # let the turn that closed the circuit finish first
            for _ in range(AUTO_REPLAY_ROUNDS):  # a round also takes entries that failed meanwhile
                results = await replay_pending(self.pipeline, self.services, self.channel, origin="telegram",
                                               outage_only=True, pace_s=pace_s, provider_up=self.circuit_closed)
                replayed += sum(r.ok for r in results)
                failed = any(r.status is ReplayStatus.failed_again for r in results)
                if not results or (failed and not self.circuit_closed()):
                    break
            if replayed:
                log.info("auto-replayed %d DLQ entries after recovery", replayed)
        finally:
            self._replaying = False
