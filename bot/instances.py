"""This process among several instances of the bot on one PostgreSQL database.

  heartbeat  every LEASE_SECONDS/3 renews this instance's update claims and chat leases, so they
             expire only when it stops (kill -9, a frozen host): then another instance resumes.
  sweeper    every second, on every instance: unfinished updates whose owner stopped renewing are
             taken over (one wins each, core/store/leases.py) and run through the normal router
             path. On PostgreSQL this replaces the start-up recovery, which would steal the rows
             live instances are running.
  leader     the outbox sender, DLQ auto-replay and retention run only on the instance holding the
             leader lock; when it dies its session ends, the lock is free, and the next instance to
             try (each tries once a round) takes over.
  poller     long polling holds a lock of its own: a second poller on the same database stops at
             start with one line (Telegram allows one poller; use WEBHOOK_URL for several instances).

On SQLite every part is the trivial implementation of the same interface: one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from core.store.interfaces import JournalEntry
from core.store.leases import (
    LEADER_LOCK,
    POLLER_LOCK,
    Coordination,
    LocalCoordination,
    LocalLock,
    PostgresCoordination,
    PostgresSessionLock,
    SessionLock,
)

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 1.0
SWEEP_LIMIT = 50
POLLER_REFUSED = ("another instance is already long-polling with this DATABASE_URL: Telegram allows one "
                  "poller per bot; set WEBHOOK_URL to run several instances")


def coordination_for(db: object, *, lease_s: float) -> Coordination:
    """PostgreSQL leases when `db` (a Database) is PostgreSQL, else the one-process answers."""
    if getattr(db, "dialect", "sqlite") == "postgres":
        return PostgresCoordination(db, lease_s=lease_s)
    return LocalCoordination()


def session_lock(database_url: str | None, key: int, *, name: str) -> SessionLock:
    return PostgresSessionLock(database_url, key, name=name) if database_url else LocalLock()


class PollerRefused(Exception):
    """Long polling cannot start: another instance polls on this database (or the lock is out of reach)."""


async def claim_poller(database_url: str | None) -> SessionLock:
    """The poller's lock, to hold until the process ends; PollerRefused when another instance polls."""
    lock = session_lock(database_url, POLLER_LOCK, name="poller")
    if await lock.try_acquire():
        return lock
    error = getattr(lock, "error", None)
    raise PollerRefused(POLLER_REFUSED if error is None else
                        f"could not take the poller's lock on the database ({error}); is DATABASE_URL reachable?")


class Instances:
    """Heartbeat, sweeper and leadership of this process (see the module docstring)."""

    def __init__(self, coordination: Coordination, *, lease_s: float, leader: SessionLock | None = None,
                 resume: Callable[[list[JournalEntry]], Awaitable[object]] | None = None, db: Any = None,
                 sweep_every_s: float = SWEEP_EVERY_S) -> None:
        self.coordination, self.lease_s, self.db = coordination, lease_s, db
        self.leader = leader or LocalLock()
        self.resume = resume  # set by the runtime: queues taken-over updates for the router
        self.sweep_every_s = min(sweep_every_s, lease_s / 3)
        self._leading = False

    @classmethod
    def local(cls) -> Instances:
        """One process (SQLite, the console, tests): every part trivial."""
        return cls(LocalCoordination(), lease_s=30.0)

    @classmethod
    def build(cls, db: object, *, lease_s: float, database_url: str | None) -> Instances:
        coordination = coordination_for(db, lease_s=lease_s)
        leader = session_lock(database_url if coordination.shared else None, LEADER_LOCK, name="leader")
        return cls(coordination, lease_s=lease_s, leader=leader, db=db)

    @property
    def shared(self) -> bool:
        return self.coordination.shared

    async def journaled(self, update_id: int, accept: Callable[[], Awaitable[bool]]) -> bool:
        """Run `accept` (the journal INSERT); if it won, claim the update in the same transaction,
        so no sweeper ever sees the row without its claim. On SQLite just `accept()`."""
        if not self.shared:
            return await accept()
        async with self.db.transaction():
            accepted = await accept()
            if accepted:
                await self.coordination.claim_update(update_id)
        return accepted

    async def finished(self, update_id: int, *, deferred: bool = False) -> None:
        """The router is done with an update: drop its claim; or, when storage deferred it, stop
        renewing the claim so that a sweeper (maybe this instance's) runs it once storage works."""
        if not self.shared:
            return
        if deferred:
            self.coordination.forget(update_id)
            return
        try:
            await self.coordination.release_update(update_id)
        except Exception as error:  # noqa: BLE001 - the row is finished: an orphan claim is pruned later
            log.warning("could not drop the claim of update %s: %s", update_id, type(error).__name__)

    async def leads(self) -> bool:
        """Does this instance run the singletons now? Tries to become the leader if nobody is."""
        leading = await self.leader.try_acquire()
        if leading != self._leading:
            self._leading = leading
            if self.shared:
                log.info("instance %s %s the leader (outbox, DLQ auto-replay, retention)",
                         self.coordination.instance_id, "is now" if leading else "is no longer")
        return leading

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat and sweeper until `stop` (nothing to do on one process)."""
        if not self.shared:
            return
        await asyncio.gather(self._every(stop, self.lease_s / 3, self.heartbeat),
                             self._every(stop, self.sweep_every_s, self.sweep))

    async def heartbeat(self) -> None:
        await self.coordination.renew()

    async def sweep(self) -> int:
        """Take over what dead instances left; how many updates were handed to `resume`."""
        entries = await self.coordination.take_over(limit=SWEEP_LIMIT)
        if entries:
            log.warning("taking over %d unfinished update(s) whose instance stopped: %s", len(entries),
                        ", ".join(str(e.update_id) for e in entries[:10]))
            if self.resume is not None:
                await self.resume(entries)
        return len(entries)

    async def close(self, *, keep: set[int] | frozenset[int] = frozenset()) -> None:
        """A clean stop: what this instance holds (except the turns still running) goes to the
        others now instead of after a lease; the leader lock is freed."""
        if self.shared:
            try:
                await self.coordination.release_all(keep=keep)
            except Exception as error:  # noqa: BLE001 - the leases then expire on their own
                log.warning("could not hand over this instance's leases: %s", type(error).__name__)
        await self.leader.release()

    @staticmethod
    async def _every(stop: asyncio.Event, every_s: float, work: Callable[[], Awaitable[object]]) -> None:
        failing = False  # one warning when the database goes away, one line when it is back
        while not stop.is_set():
            try:
                await work()
                if failing:
                    log.info("instance %s works again", work.__name__)
                failing = False
            except Exception as error:  # noqa: BLE001 - a database hiccup must not stop the loop
                if not failing:
                    failing = True
                    log.warning("instance %s failed (retrying every %.1f s): %s", work.__name__, every_s,
                                type(error).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
