"""One turn per chat at a time, in update order: in this process and across instances.

In one process an `asyncio.Lock` per chat is enough (and is all the SQLite path pays for). With
several instances on one PostgreSQL database (`Coordination.shared`) a turn also holds the chat's
lease (core/store/leases.py), and a turn for update U runs only once no earlier update of its chat
is still unfinished in the journal: consecutive messages that reached different instances are
answered in order. An earlier update whose owner died is taken over by a sweeper, then run first.

Why no deadlock is possible: a task waits (for the local lock, or in a backoff sleep) only while
it holds nothing. While it holds the local lock it runs two short statements that never wait for
another lock holder (the lease is an upsert that either takes the row or does not; the order check
is a read); if either says "not yet", it gives both back before sleeping. So no cycle of tasks each
holding what the next one waits for can form, here or between instances. What remains possible is
waiting long for an earlier update that never ends (its row stuck unfinished): that wait is bounded
by `order_wait_s` without progress, after which the turn runs anyway (liveness before order).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from core.failures.backoff_schedule import ceiling_wait_s
from core.store.leases import Coordination, LocalCoordination

log = logging.getLogger(__name__)
RETRY_BASE_WAIT_S = 0.05  # a waiter retries the lease this soon, doubling ...
RETRY_MAX_WAIT_S = 0.5  # ... up to this
MAX_TRACKED_CHATS = 10_000
RECENTLY_DONE = 32  # per chat: turns ended here whose journal rows may not say so yet


class ChatTurns:
    """`async with chat_turns.hold(chat_id, update_id=U):` the chat is this turn's alone."""

    def __init__(self, coordination: Coordination | None = None, *, order_wait_s: float = 120.0) -> None:
        self.coordination = coordination or LocalCoordination()
        self.order_wait_s = order_wait_s
        self._locks: dict[int, asyncio.Lock] = {}
        # A turn that ended here is still `processing` in the journal until its caller marks it:
        # a later turn of the chat must not wait for it.
        self._done: dict[int, deque[int]] = {}

    @asynccontextmanager
    async def hold(self, chat_id: int, *, update_id: int | None = None) -> AsyncIterator[None]:
        """Hold the chat; `update_id` None (a DLQ replay) skips the order check, not the exclusion."""
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        try:
            if not self.coordination.shared:
                async with lock:
                    yield
                return
            await self._acquire(lock, chat_id, update_id)
            try:
                yield
            finally:
                if update_id is not None:
                    self._done.setdefault(chat_id, deque(maxlen=RECENTLY_DONE)).append(update_id)
                try:
                    await self.coordination.release_chat(chat_id)
                except Exception as error:  # noqa: BLE001 - the lease then expires on its own
                    log.warning("could not release the lease of chat %s: %s", chat_id, type(error).__name__)
                finally:
                    lock.release()
        finally:
            if not lock.locked() and len(self._locks) > MAX_TRACKED_CHATS:
                self._locks.pop(chat_id, None)
                self._done.pop(chat_id, None)

    async def _acquire(self, lock: asyncio.Lock, chat_id: int, update_id: int | None) -> None:
        """Hold the local lock and the chat's lease, with no earlier update of the chat unfinished."""
        attempt, waiting_for, since = 0, None, time.monotonic()
        while True:
            await lock.acquire()  # waits holding nothing
            try:
                earlier = await self._try(chat_id, update_id)
            except BaseException:
                lock.release()
                raise
            if earlier is None:
                return
            lock.release()
            if earlier != waiting_for:  # progress: the next earlier update, a fresh wait
                waiting_for, since = earlier, time.monotonic()
            elif earlier > 0 and time.monotonic() - since > self.order_wait_s:
                log.warning("chat %s: update %s waited %.0f s for earlier update %s; running it now",
                            chat_id, update_id, self.order_wait_s, earlier)
                self._done.setdefault(chat_id, deque(maxlen=RECENTLY_DONE)).append(earlier)  # stop waiting for it
            attempt += 1
            await asyncio.sleep(ceiling_wait_s(attempt=attempt, base_wait_s=RETRY_BASE_WAIT_S,
                                               max_wait_s=RETRY_MAX_WAIT_S))  # holding nothing

    async def _try(self, chat_id: int, update_id: int | None) -> int | None:
        """One try with the local lock held: None when the lease is ours and the turn may run;
        else what it waits for (0: another instance holds the lease; N: earlier update N)."""
        coordination = self.coordination
        if not await coordination.try_chat(chat_id):
            return 0
        if update_id is None:
            return None
        try:
            earlier = await coordination.earlier_unfinished(chat_id, update_id,
                                                            exclude=tuple(self._done.get(chat_id, ())))
        except BaseException:
            await coordination.release_chat(chat_id)
            raise
        if earlier is not None:
            await coordination.release_chat(chat_id)
        return earlier
