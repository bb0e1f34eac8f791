"""Several instances of one bot on one PostgreSQL database: who runs which update, which chat, which loop.

`Coordination` is what the bot asks; two implementations:

  LocalCoordination     SQLite (one process: SQLite's file lock already refuses a second bot on
                        the same DATA_DIR). Every question has the trivial answer and costs nothing.
  PostgresCoordination  leases in two tables (migration p003), timed by the database's clock
                        (`clock_timestamp()`), never by the instances' clocks, which may disagree:
    update_claims(update_id, owner, lease_until)  the instance whose journal INSERT won an update
        holds its claim (written in the same transaction as the journal row: `claim_update`);
        its heartbeat renews it every LEASE_SECONDS/3. An unfinished journal row whose claim has
        expired (its owner died: kill -9) is taken over by one conditional upsert (`take_over`):
        under concurrent sweepers exactly one instance gets each row.
    chat_leases(chat_id, owner, lease_until)  at most one turn of a chat runs at a time across
        instances (`try_chat` / `release_chat`; see core/chat_turns.py for the waiting).

`SessionLock` is a session-level advisory lock on a dedicated connection (not the pool's):
held while that connection lives, so when its instance dies the server frees it and another
instance takes it at its next try. Two keys: the leader (outbox, DLQ auto-replay, retention run
on one instance at a time) and the poller (Telegram allows one long poller per bot).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from collections.abc import Collection
from typing import Any, Protocol

from core.store.interfaces import JournalEntry

log = logging.getLogger(__name__)
LEADER_LOCK = 0x6777_6C65_6164  # "gwlead": advisory lock keys, any 64-bit numbers no other lock uses
POLLER_LOCK = 0x6777_706F_6C6C  # "gwpoll"
UNFINISHED = "('received', 'processing')"
# Until: the database's clock plus the lease. A float parameter times an interval is portable
# across psycopg's dumpers (int parameters may be sent as int2 or numeric).
_UNTIL = "clock_timestamp() + ? * interval '1 second'"
# The journal's own times are ISO-8601 text in UTC (Clock.iso()): compared as text, so that an odd
# value can never make the sweeper's statement fail.
_ISO_AGO = """to_char((clock_timestamp() - ? * interval '1 second') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS')"""


def new_instance_id() -> str:
    """hostname-pid-random: unique per process, readable in the lease tables."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class Coordination(Protocol):
    """What the bot asks about updates and chats when several instances may share the database."""

    instance_id: str
    shared: bool  # False: one process only, every answer below is trivial (skip the calls)

    async def claim_update(self, update_id: int) -> None:
        """This instance owns `update_id` (its journal INSERT won): hold the claim. Call inside the
        journal row's transaction, so no other instance ever sees the row without its claim."""
        ...

    async def release_update(self, update_id: int) -> None:
        """The update is finished (its journal row says so): drop the claim (no statement unless held)."""
        ...

    def forget(self, update_id: int) -> None:
        """Stop renewing the claim without a statement (storage refused a write mid-turn): the
        lease runs out and a sweeper, maybe this instance's, runs the update again."""
        ...

    async def take_over(self, *, limit: int = 50) -> list[JournalEntry]:
        """Unfinished journal rows whose owner stopped renewing: now this instance's, oldest first."""
        ...

    async def renew(self) -> None:
        """Heartbeat: extend the claims and chat leases this instance holds (in memory: a claim
        this process forgot is never renewed by accident) by a lease."""
        ...

    async def try_chat(self, chat_id: int) -> bool:
        """Take the chat's lease (free, expired or already mine); False while another instance holds it."""
        ...

    async def release_chat(self, chat_id: int) -> None: ...

    async def earlier_unfinished(self, chat_id: int, update_id: int, *, exclude: Collection[int] = ()) -> int | None:
        """The oldest unfinished update of this chat before `update_id` (except `exclude`), or None."""
        ...

    async def release_all(self, *, keep: Collection[int] = ()) -> None:
        """A clean stop: claims (except `keep`: turns still running) expire now, so others take over at once."""
        ...

    async def prune(self) -> int:
        """Drop claims of finished updates (a release that failed); how many."""
        ...


class SessionLock(Protocol):
    """A lock held while this process (its dedicated connection) lives."""

    held: bool

    async def try_acquire(self) -> bool:
        """Take the lock if free; True while this instance holds it (checks the connection still does)."""
        ...

    async def release(self) -> None: ...


class LocalCoordination:
    """SQLite: one process owns everything."""

    shared = False

    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id or new_instance_id()

    async def claim_update(self, update_id: int) -> None:
        return None

    async def release_update(self, update_id: int) -> None:
        return None

    def forget(self, update_id: int) -> None:
        return None

    async def take_over(self, *, limit: int = 50) -> list[JournalEntry]:
        return []

    async def renew(self) -> None:
        return None

    async def try_chat(self, chat_id: int) -> bool:
        return True

    async def release_chat(self, chat_id: int) -> None:
        return None

    async def earlier_unfinished(self, chat_id: int, update_id: int, *, exclude: Collection[int] = ()) -> int | None:
        return None

    async def release_all(self, *, keep: Collection[int] = ()) -> None:
        return None

    async def prune(self) -> int:
        return 0


class LocalLock:
    """SQLite: the only process is always the leader and the poller."""

    held = True

    async def try_acquire(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class PostgresCoordination:
    """Leases in PostgreSQL (`db` is a PostgresDatabase), `lease_s` long, timed by the server."""

    shared = True

    def __init__(self, db: Any, *, lease_s: float, instance_id: str | None = None) -> None:
        self.db, self.lease_s = db, float(lease_s)
        self.instance_id = instance_id or new_instance_id()
        self.updates: set[int] = set()  # the claims this process holds and renews
        self.chats: set[int] = set()  # the chat leases it holds and renews

    async def claim_update(self, update_id: int) -> None:
        await self.db.execute(
            f"INSERT INTO update_claims(update_id, owner, lease_until) VALUES (?, ?, {_UNTIL})"
            " ON CONFLICT (update_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until",
            [update_id, self.instance_id, self.lease_s])
        self.updates.add(update_id)

    async def release_update(self, update_id: int) -> None:
        if update_id not in self.updates:  # a duplicate, or an update someone else owns: nothing to drop
            return
        self.updates.discard(update_id)
        await self.db.execute("DELETE FROM update_claims WHERE update_id = ? AND owner = ?",
                              [update_id, self.instance_id])

    def forget(self, update_id: int) -> None:
        self.updates.discard(update_id)

    async def take_over(self, *, limit: int = 50) -> list[JournalEntry]:
        # One statement: candidates are unfinished rows whose claim expired, or that have no claim
        # and were received more than a lease ago (rows copied by migrate-to-postgres, or journaled
        # by a version without claims). The upsert's WHERE is evaluated again on the row's latest
        # version when two sweepers race (READ COMMITTED), so only one of them gets each update.
        rows = await self.db.fetchall(
            "WITH candidates AS ("
            " SELECT j.update_id FROM journal AS j LEFT JOIN update_claims AS c ON c.update_id = j.update_id"
            f" WHERE j.state IN {UNFINISHED} AND (c.lease_until < clock_timestamp() OR (c.update_id IS NULL"
            f"  AND j.received_at < {_ISO_AGO}))"
            " ORDER BY j.update_id LIMIT ?),"
            " taken AS ("
            f" INSERT INTO update_claims(update_id, owner, lease_until) SELECT update_id, ?, {_UNTIL} FROM candidates"
            " ON CONFLICT (update_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until"
            " WHERE update_claims.lease_until < clock_timestamp() RETURNING update_id)"
            " SELECT j.update_id, j.chat_id, j.user_id, j.kind, j.state, j.raw, j.trace_id, j.attempts"
            " FROM journal AS j JOIN taken AS t ON t.update_id = j.update_id ORDER BY j.update_id",
            [self.lease_s, limit, self.instance_id, self.lease_s])
        self.updates.update(r[0] for r in rows)
        return [JournalEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    async def renew(self) -> None:
        if self.updates:
            await self.db.execute(f"UPDATE update_claims SET lease_until = {_UNTIL} WHERE owner = ?"
                                  " AND update_id = ANY(?)", [self.lease_s, self.instance_id, list(self.updates)])
        if self.chats:
            await self.db.execute(f"UPDATE chat_leases SET lease_until = {_UNTIL} WHERE owner = ?"
                                  " AND chat_id = ANY(?)", [self.lease_s, self.instance_id, list(self.chats)])

    async def try_chat(self, chat_id: int) -> bool:
        changed = await self.db.execute(
            f"INSERT INTO chat_leases(chat_id, owner, lease_until) VALUES (?, ?, {_UNTIL})"
            " ON CONFLICT (chat_id) DO UPDATE SET owner = excluded.owner, lease_until = excluded.lease_until"
            " WHERE chat_leases.lease_until < clock_timestamp() OR chat_leases.owner = excluded.owner",
            [chat_id, self.instance_id, self.lease_s])
        if changed == 1:
            self.chats.add(chat_id)
        return changed == 1

    async def release_chat(self, chat_id: int) -> None:
        self.chats.discard(chat_id)
        await self.db.execute("DELETE FROM chat_leases WHERE chat_id = ? AND owner = ?", [chat_id, self.instance_id])

    async def earlier_unfinished(self, chat_id: int, update_id: int, *, exclude: Collection[int] = ()) -> int | None:
        row = await self.db.fetchone(
            f"SELECT MIN(update_id) FROM journal WHERE chat_id = ? AND update_id < ? AND state IN {UNFINISHED}"
            " AND NOT (update_id = ANY(?))", [chat_id, update_id, list(exclude)])
        return int(row[0]) if row and row[0] is not None else None

    async def release_all(self, *, keep: Collection[int] = ()) -> None:
        # Chat leases stay: a turn still running gives its chat back when it ends (or its lease runs out).
        self.updates.intersection_update(keep)
        await self.db.execute("UPDATE update_claims SET lease_until = clock_timestamp() WHERE owner = ?"
                              " AND NOT (update_id = ANY(?))", [self.instance_id, list(keep)])

    async def prune(self) -> int:
        return await self.db.execute(
            "DELETE FROM update_claims AS c WHERE NOT EXISTS (SELECT 1 FROM journal AS j"
            f" WHERE j.update_id = c.update_id AND j.state IN {UNFINISHED})")


class PostgresSessionLock:
    """`pg_try_advisory_lock(key)` on a connection of its own (`url`: the DATABASE_URL)."""

    def __init__(self, url: str, key: int, *, name: str, connect_timeout_s: float = 10.0) -> None:
        self.url, self.key, self.name, self.connect_timeout_s = url, key, name, connect_timeout_s
        self.held = False
        self.error: str | None = None  # why the last try failed, when it was not "someone else holds it"
        self._conn: Any = None

    async def try_acquire(self) -> bool:
        import psycopg

        from core.store.engine import normalize_url

        self.error = None
        try:
            if self._conn is None or self._conn.closed:
                self.held = False
                self._conn = await psycopg.AsyncConnection.connect(
                    normalize_url(self.url), autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)),
                    application_name=f"telegram-llm-gateway {self.name}")
            if self.held:  # still ours while the session lives: prove it does
                await self._conn.execute("SELECT 1")
                return True
            cursor = await self._conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            row = await cursor.fetchone()
            self.held = bool(row and row[0])
        except psycopg.Error as error:
            self.error = type(error).__name__
            if self.held:
                log.warning("lost the %s lock: its connection failed (%s)", self.name, type(error).__name__)
            await self._drop()
        return self.held

    async def release(self) -> None:
        """Closing the session frees the lock."""
        await self._drop()

    async def _drop(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is gone either way
                log.debug("closing the %s connection failed", self.name)
