"""The conversation history (the `messages` table), with a per-chat read cache on SQLite."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from operator import attrgetter

from core.context.budget import newest_that_fit
from core.store.db import read_counter
from core.store.engine import Database
from core.store.interfaces import HistoryMessage

# Per-chat high-water mark of archived history, kept in the `counters` table (one row per chat).
ARCHIVE_CURSOR = "history_archived_through:"
# History keeps the newest active messages of this many chats in memory (least recently read out
# first; a prompt's worth per chat at most), and at most this many messages and tokens of them in
# all (about 1 KB per message of a typical length with its ChatMessage: some 20 MB at the most).
HISTORY_CACHE_CHATS = 256
HISTORY_CACHE_MESSAGES = 20_000
HISTORY_CACHE_TOKENS = 1_000_000
UNLIMITED = 2**63 - 1


@dataclass
class _Window:
    """The newest active messages of one chat (oldest first) as last read, and their tokens;
    `complete` when they are all of its active messages."""

    messages: list[HistoryMessage]
    tokens: int
    complete: bool


class History:
    """Per-chat conversation, with each message's token count computed once and stored.

    `archived = 0` is the active conversation the prompt draws from; `archived = 1` has left it
    (dropped from the prompt after being archived, or set aside by /new). Archives are written
    ahead of need, so an active message may already be in an archive: `archive_cursor` says up
    to which message id.

    `recent` keeps what it read per chat (`_Window`, within the HISTORY_CACHE_* limits), so a
    turn reads only the rows added since the last one. The cache stays exact because every change
    to the active set goes through this class: new rows always have larger ids (AUTOINCREMENT) and
    are read by id; `archive_through` and `start_new` update the window once their statement has
    committed, or drop it when they run inside a transaction (which may still roll back); nothing
    read inside a transaction is kept; and a commit by any other connection (`PRAGMA
    data_version`: the DLQ replay CLI, a second process) drops every window.

    On PostgreSQL there is no cache: other instances of the bot write the same chats and nothing
    like `data_version` tells this one, so every `recent` reads the database (still bounded by
    what fits, on the (chat_id, archived, id) index).
    """

    def __init__(self, db: Database, *, cache_chats: int = HISTORY_CACHE_CHATS,
                 cache_messages: int = HISTORY_CACHE_MESSAGES, cache_tokens: int = HISTORY_CACHE_TOKENS) -> None:
        self.db = db
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        self._cache_chats, self._cache_messages, self._cache_tokens = cache_chats, cache_messages, cache_tokens
        self._cached_messages = self._cached_tokens = 0
        self._data_version: int | None = None
        self._cached = db.dialect == "sqlite"  # see the class docstring: PostgreSQL reads every time

    async def append(self, *, chat_id: int, role: str, content: str, tokens: int, trace_id: str | None,
               update_id: int | None, now: str) -> int:
        # No cache update: the next `recent` reads every active row newer than its window.
        return await self.db.insert_id(
            "INSERT INTO messages(chat_id, role, content, tokens, trace_id, update_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", [chat_id, role, content, tokens, trace_id, update_id, now])

    async def recent(self, chat_id: int, *, max_tokens: int, max_messages: int = 400) -> list[HistoryMessage]:
        """Newest messages that fit `max_tokens`, returned oldest first. Cost is bounded by
        what fits, not by the length of the conversation (index on chat_id, archived, id), and,
        once the chat's window is cached, by the messages added since the last call."""
        if max_messages == 0:
            return []
        if max_messages < 0:  # SQLite's LIMIT: a negative limit is no limit
            max_messages = UNLIMITED
        if not self._cached:
            window = await self._read(chat_id, max_tokens=max_tokens, max_messages=max_messages)
            start, _ = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
            return window.messages[start:]
        version = await self._other_writers_checked()
        window = self._windows.get(chat_id)
        start = None
        if window is not None:
            window = await self._catch_up(chat_id, window, max_messages)
            start, used = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
        if window is None or start is None:
            window = await self._read(chat_id, max_tokens=max_tokens, max_messages=max_messages)
            start, used = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
            assert start is not None  # a fresh read ends where the limits do, or holds every active message
        if await self._data_version_now() != version:  # another connection committed meanwhile: read again
            self._forget_all()
            window = await self._read(chat_id, max_tokens=max_tokens, max_messages=max_messages)
            start, _ = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
            return window.messages[start:]
        if not self.db.in_transaction:  # what a transaction reads may still roll back
            # Keep what the next call needs: the messages kept and the newest one that did not
            # fit (with the same limits, a later call never reaches further back).
            first = max(start - 1, 0)
            tokens = used + (window.messages[first].tokens if first < start else 0)
            self._store(chat_id, _Window(window.messages[first:], tokens, window.complete and first == 0))
        return window.messages[start:]

    async def _read(self, chat_id: int, *, max_tokens: int, max_messages: int) -> _Window:
        """The uncached read: the newest `max_messages` active messages down to the first that
        does not fit `max_tokens`, that one included."""
        rows = await self.db.fetchall(
            "SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0"
            " ORDER BY id DESC LIMIT ?", [chat_id, max_messages])
        messages: list[HistoryMessage] = []
        used = 0
        complete = True
        for row in rows:
            messages.append(HistoryMessage(*row))
            used += row[3]
            if used > max_tokens:
                complete = False
                break
        else:
            complete = len(messages) < max_messages
        messages.reverse()
        return _Window(messages, used, complete)

    async def _catch_up(self, chat_id: int, window: _Window, max_messages: int) -> _Window:
        """The window plus the active rows added since it was read (at most `max_messages`)."""
        newest = window.messages[-1].id if window.messages else 0
        rows = await self.db.fetchall(
            "SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0 AND id > ?"
            " ORDER BY id DESC LIMIT ?", [chat_id, newest, max_messages])
        if not rows:
            return window
        added = [HistoryMessage(*row) for row in reversed(rows)]
        tokens = sum(row[3] for row in rows)
        if len(rows) == max_messages:  # there may be more: the older messages are not needed now
            return _Window(added, tokens, False)
        return _Window(window.messages + added, window.tokens + tokens, window.complete)

    async def _other_writers_checked(self) -> int:
        """Drop every window if another connection committed since the last look."""
        version = await self._data_version_now()
        if version != self._data_version:
            self._forget_all()
            self._data_version = version
        return version

    async def _data_version_now(self) -> int:
        row = await self.db.fetchone("PRAGMA data_version")  # SQLite only: the cache exists only there
        return int(row[0]) if row else 0

    def _store(self, chat_id: int, window: _Window) -> None:
        self._forget(chat_id)
        if len(window.messages) > self._cache_messages or window.tokens > self._cache_tokens:
            return
        self._windows[chat_id] = window
        self._cached_messages += len(window.messages)
        self._cached_tokens += window.tokens
        while (len(self._windows) > self._cache_chats or self._cached_messages > self._cache_messages
               or self._cached_tokens > self._cache_tokens):
            self._forget(next(iter(self._windows)))

    def _forget(self, chat_id: int) -> None:
        old = self._windows.pop(chat_id, None)
        if old is not None:
            self._cached_messages -= len(old.messages)
            self._cached_tokens -= old.tokens

    def _forget_all(self) -> None:
        self._windows.clear()
        self._cached_messages = self._cached_tokens = 0

    async def count_active(self, chat_id: int) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM messages WHERE chat_id = ? AND archived = 0", [chat_id])
        return int(row[0]) if row else 0

    async def older_than(self, chat_id: int, message_id: int, *, limit: int = 1000) -> list[HistoryMessage]:
        rows = await self.db.fetchall(
            "SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0 AND id < ?"
            " ORDER BY id LIMIT ?", [chat_id, message_id, limit])
        return [HistoryMessage(*r) for r in rows]

    async def archive_through(self, chat_id: int, message_id: int) -> int:
        """Move messages up to `message_id` out of the active conversation (kept in the table)."""
        changed = await self.db.execute("UPDATE messages SET archived = 1 WHERE chat_id = ? AND archived = 0 AND id <= ?",
                                 [chat_id, message_id])
        window = self._windows.get(chat_id)
        if window is not None:
            if self.db.in_transaction:
                self._forget(chat_id)
            elif window.messages and window.messages[0].id <= message_id:
                # The window held the newest active messages: every active one older than the
                # first it keeps is archived too, so what stays is the whole active conversation.
                gone = 0
                while gone < len(window.messages) and window.messages[gone].id <= message_id:
                    gone += 1
                dropped = sum(m.tokens for m in window.messages[:gone])
                window.messages = window.messages[gone:]
                window.tokens -= dropped
                window.complete = True
                self._cached_messages -= gone
                self._cached_tokens -= dropped
        return changed

    async def archive_cursor(self, chat_id: int) -> int:
        """The newest message id already copied into a history archive artifact (0 if none)."""
        return await read_counter(self.db, f"{ARCHIVE_CURSOR}{chat_id}")

    async def advance_archive_cursor(self, chat_id: int, message_id: int) -> None:
        """Record that messages up to `message_id` are in an archive (the cursor never moves back)."""
        await self.db.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = CASE WHEN counters.value > excluded.value"
                              " THEN counters.value ELSE excluded.value END",
                        [f"{ARCHIVE_CURSOR}{chat_id}", message_id])

    async def start_new(self, chat_id: int) -> int:
        changed = await self.db.execute("UPDATE messages SET archived = 1 WHERE chat_id = ? AND archived = 0", [chat_id])
        self._forget(chat_id)
        return changed


    # /retry (bot/commands_control.py): the last exchange is set aside while it is answered again,
    # then deleted (the new answer replaces it) or, when the new turn does not answer, put back.
    async def last_exchange(self, chat_id: int) -> list[HistoryMessage]:
        """The chat's last active user message and what followed it, oldest first ([] if none)."""
        row = await self.db.fetchone("SELECT MAX(id) FROM messages WHERE chat_id = ? AND archived = 0 AND role = 'user'",
                              [chat_id])
        if row is None or row[0] is None:
            return []
        rows = await self.db.fetchall("SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0"
                               " AND id >= ? ORDER BY id", [chat_id, row[0]])
        return [HistoryMessage(*r) for r in rows]

    async def set_aside(self, chat_id: int, message_ids: list[int], *, aside: bool = True) -> int:
        """Take these messages out of the conversation (`aside`), or put them back."""
        marks = ",".join("?" * len(message_ids))
        changed = await self.db.execute(f"UPDATE messages SET archived = ? WHERE chat_id = ? AND id IN ({marks})",
                                 [int(aside), chat_id, *message_ids])
        self._forget(chat_id)
        return changed

    async def delete(self, chat_id: int, message_ids: list[int]) -> int:
        """Remove these messages for good (an answer /retry replaced, and its question, now asked again)."""
        marks = ",".join("?" * len(message_ids))
        changed = await self.db.execute(f"DELETE FROM messages WHERE chat_id = ? AND id IN ({marks})",
                                 [chat_id, *message_ids])
        self._forget(chat_id)
        return changed

def _fit(window: _Window, *, max_tokens: int, max_messages: int) -> tuple[int | None, int]:
    """Where the newest messages that fit start in `window.messages`, and their tokens; None
    when the window ends (it is not the whole active conversation) before the limits are met."""
    messages = window.messages
    considered = min(len(messages), max_messages)
    fit, used = newest_that_fit(map(_TOKENS, islice(reversed(messages), max_messages)), max_tokens)
    if fit < considered or fit == max_messages or fit == len(messages) and window.complete:
        return len(messages) - fit, used
    return None, used


_TOKENS = attrgetter("tokens")
