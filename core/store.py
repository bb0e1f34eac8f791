"""SQLite state under DATA_DIR: numbered migrations, and the journal/history/chat repositories.

sqlite-utils 4 runs the migrations (recorded in `_sqlite_migrations`, safe to re-run). The hot
path uses the connection directly with prepared statements: a turn writes a handful of small
rows, and WAL with synchronous=NORMAL keeps each commit well under a millisecond while
surviving a killed process. Other concerns (usage, DLQ, outbox, artifacts, hot state) have
their own repositories in their modules, over the same `Database`; each is a narrow interface
a PostgreSQL implementation could replace without touching the pipeline.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from operator import attrgetter
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from core.context.budget import newest_that_fit
from core.contracts import ChatMessage

GATEWAY_DB = "gateway.db"
migrations = Migrations("gateway")


@migrations()
def m001_journal_history(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE journal (
        update_id INTEGER PRIMARY KEY, chat_id INTEGER, user_id INTEGER, kind TEXT NOT NULL,
        state TEXT NOT NULL, raw TEXT NOT NULL, trace_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT, received_at TEXT NOT NULL, updated_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX journal_state ON journal(state) WHERE state IN ('received','processing')")
    db.execute("""CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id INTEGER NOT NULL, role TEXT NOT NULL,
        content TEXT NOT NULL, tokens INTEGER NOT NULL, trace_id TEXT, update_id INTEGER,
        created_at TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE INDEX messages_chat ON messages(chat_id, archived, id)")
    db.execute("""CREATE TABLE chats (
        chat_id INTEGER PRIMARY KEY, blocked_at TEXT, blocked_reason TEXT,
        last_prompt_tokens INTEGER, last_prompt_budget INTEGER, last_trace_id TEXT, updated_at TEXT)""")


@migrations()
def m002_context(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE hot_state (
        chat_id INTEGER PRIMARY KEY, state_json TEXT NOT NULL, tokens INTEGER NOT NULL,
        trace_id TEXT, updated_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE artifacts (
        sha256 TEXT PRIMARY KEY, media_type TEXT NOT NULL, size_bytes INTEGER NOT NULL,
        tokens INTEGER, created_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE artifact_links (
        sha256 TEXT NOT NULL REFERENCES artifacts(sha256), chat_id INTEGER NOT NULL,
        user_id INTEGER, label TEXT NOT NULL, summary TEXT NOT NULL, kind TEXT NOT NULL,
        trace_id TEXT, created_at TEXT NOT NULL, PRIMARY KEY (chat_id, sha256))""")
    db.execute("""CREATE TABLE prompt_metrics (
        trace_id TEXT PRIMARY KEY, chat_id INTEGER NOT NULL, at TEXT NOT NULL,
        hot_state_tokens INTEGER, history_tokens INTEGER, history_kept INTEGER,
        history_dropped INTEGER, artifact_count INTEGER, total_tokens INTEGER, budget_tokens INTEGER)""")


@migrations()
def m003_usage(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, day TEXT NOT NULL, month TEXT NOT NULL,
        trace_id TEXT, chat_id INTEGER, user_id INTEGER, model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
        estimated INTEGER NOT NULL, cost_usd REAL, wasted INTEGER NOT NULL)""")
    db.execute("CREATE INDEX usage_user_day ON usage(user_id, day)")
    db.execute("CREATE INDEX usage_month ON usage(month)")
    db.execute("CREATE TABLE warnings (key TEXT PRIMARY KEY, at TEXT NOT NULL)")


@migrations()
def m004_failures(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE dlq (
        id INTEGER PRIMARY KEY AUTOINCREMENT, trace_id TEXT NOT NULL, chat_id INTEGER, user_id INTEGER,
        update_id INTEGER, inbound_json TEXT NOT NULL, error_kind TEXT NOT NULL, error_message TEXT NOT NULL,
        attempts_json TEXT NOT NULL, first_failed_at TEXT NOT NULL, last_failed_at TEXT NOT NULL,
        status TEXT NOT NULL, replayable INTEGER NOT NULL, replay_trace_id TEXT, updated_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX dlq_status ON dlq(status, id)")
    db.execute("""CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, chat_id INTEGER NOT NULL,
        text TEXT NOT NULL, parse_mode TEXT, trace_id TEXT, dedupe_key TEXT UNIQUE,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL,
        last_error TEXT, created_at TEXT NOT NULL, sent_at TEXT)""")
    db.execute("CREATE INDEX outbox_pending ON outbox(status, next_attempt_at)")
    db.execute("""CREATE TABLE alert_state (
        key TEXT PRIMARY KEY, last_sent_at TEXT NOT NULL, suppressed INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


@migrations()
def m005_usage_totals(db: sqlite_utils.Database) -> None:
    """Running totals the budget check reads on every turn (a user's day, the bot's month), so
    its cost does not grow with the number of usage rows in the period."""
    db.execute("""CREATE TABLE usage_totals (
        scope TEXT NOT NULL, period TEXT NOT NULL, total_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (scope, period))""")
    db.execute("""INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts)
        SELECT 'user:' || user_id, day, SUM(total_tokens), TOTAL(cost_usd), COUNT(*) FROM usage GROUP BY user_id, day""")
    db.execute("""INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts)
        SELECT 'all', month, SUM(total_tokens), TOTAL(cost_usd), COUNT(*) FROM usage GROUP BY month""")


@migrations()
def m006_usage_by_trace(db: sqlite_utils.Database) -> None:
    """A failed turn marks its attempts wasted by trace id: an index, not a scan of all usage."""
    db.execute("CREATE INDEX usage_trace ON usage(trace_id)")


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Open (or create) a database in WAL mode and run pending migrations."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    db = sqlite_utils.Database(conn)
    if str(path) != ":memory:":
        db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    migrations.apply(db)
    return db


def bump_counter(db: sqlite_utils.Database, name: str, by: int = 1) -> None:
    db.execute("INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
               [name, by, by])


def read_counter(db: sqlite_utils.Database, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """Several writes in one commit (a WAL commit costs more than the writes it carries).
    Nested use joins the outer transaction."""
    if db.conn.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass(frozen=True)
class JournalEntry:
    update_id: int
    chat_id: int | None
    user_id: int | None
    kind: str
    state: str
    raw: dict[str, Any]
    trace_id: str | None
    attempts: int


class Journal:
    """The inbox: every accepted update, keyed by update_id, written before it is processed.

    States: received -> processing -> replied | failed | ignored. A redelivered update_id is
    refused by the primary key; rows left in received/processing by a crash are resumed.
    """

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def accept(self, *, update_id: int, chat_id: int | None, user_id: int | None, kind: str,
               raw: dict[str, Any], trace_id: str | None, now: str) -> bool:
        """Record a new update; False when this update_id was seen before (a duplicate)."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO journal(update_id, chat_id, user_id, kind, state, raw, trace_id,"
            " received_at, updated_at) VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?)",
            [update_id, chat_id, user_id, kind, json.dumps(raw, ensure_ascii=False), trace_id, now, now])
        return cursor.rowcount == 1

    def mark(self, update_id: int, state: str, *, now: str, error: str | None = None,
             trace_id: str | None = None) -> None:
        self.db.execute(
            "UPDATE journal SET state = ?, updated_at = ?, error = COALESCE(?, error),"
            " trace_id = COALESCE(?, trace_id), attempts = attempts + (? = 'processing') WHERE update_id = ?",
            [state, now, error, trace_id, state, update_id])

    def state(self, update_id: int) -> str | None:
        row = self.db.execute("SELECT state FROM journal WHERE update_id = ?", [update_id]).fetchone()
        return row[0] if row else None

    def unfinished(self, limit: int = 1000) -> list[JournalEntry]:
        rows = self.db.execute(
            "SELECT update_id, chat_id, user_id, kind, state, raw, trace_id, attempts FROM journal"
            " WHERE state IN ('received', 'processing') ORDER BY update_id LIMIT ?", [limit]).fetchall()
        return [JournalEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def prune(self, *, before: str) -> int:
        """Drop finished rows older than `before`; the journal only needs recent ids for dedupe."""
        cursor = self.db.execute(
            "DELETE FROM journal WHERE state NOT IN ('received', 'processing') AND updated_at < ?", [before])
        return cursor.rowcount


@dataclass(frozen=True)
class HistoryMessage:
    id: int
    role: str
    content: str
    tokens: int

    @cached_property
    def chat_message(self) -> ChatMessage:
        """This message as a prompt carries it, validated once: History keeps a chat's recent
        messages in memory, so a long conversation's prompt is not validated again every turn."""
        return ChatMessage(role=self.role, content=self.content)


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
    """

    def __init__(self, db: sqlite_utils.Database, *, cache_chats: int = HISTORY_CACHE_CHATS,
                 cache_messages: int = HISTORY_CACHE_MESSAGES, cache_tokens: int = HISTORY_CACHE_TOKENS) -> None:
        self.db = db
        self._windows: OrderedDict[int, _Window] = OrderedDict()
        self._cache_chats, self._cache_messages, self._cache_tokens = cache_chats, cache_messages, cache_tokens
        self._cached_messages = self._cached_tokens = 0
        self._data_version: int | None = None

    def append(self, *, chat_id: int, role: str, content: str, tokens: int, trace_id: str | None,
               update_id: int | None, now: str) -> int:
        # No cache update: the next `recent` reads every active row newer than its window.
        cursor = self.db.execute(
            "INSERT INTO messages(chat_id, role, content, tokens, trace_id, update_id, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", [chat_id, role, content, tokens, trace_id, update_id, now])
        return int(cursor.lastrowid or 0)

    def recent(self, chat_id: int, *, max_tokens: int, max_messages: int = 400) -> list[HistoryMessage]:
        """Newest messages that fit `max_tokens`, returned oldest first. Cost is bounded by
        what fits, not by the length of the conversation (index on chat_id, archived, id), and,
        once the chat's window is cached, by the messages added since the last call."""
        if max_messages == 0:
            return []
        if max_messages < 0:  # SQLite's LIMIT: a negative limit is no limit
            max_messages = UNLIMITED
        version = self._other_writers_checked()
        window = self._windows.get(chat_id)
        start = None
        if window is not None:
            window = self._catch_up(chat_id, window, max_messages)
            start, used = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
        if window is None or start is None:
            window = self._read(chat_id, max_tokens=max_tokens, max_messages=max_messages)
            start, used = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
            assert start is not None  # a fresh read ends where the limits do, or holds every active message
        if self._data_version_now() != version:  # another connection committed meanwhile: read again
            self._forget_all()
            window = self._read(chat_id, max_tokens=max_tokens, max_messages=max_messages)
            start, _ = _fit(window, max_tokens=max_tokens, max_messages=max_messages)
            return window.messages[start:]
        if not self.db.conn.in_transaction:  # what a transaction reads may still roll back
            # Keep what the next call needs: the messages kept and the newest one that did not
            # fit (with the same limits, a later call never reaches further back).
            first = max(start - 1, 0)
            tokens = used + (window.messages[first].tokens if first < start else 0)
            self._store(chat_id, _Window(window.messages[first:], tokens, window.complete and first == 0))
        return window.messages[start:]

    def _read(self, chat_id: int, *, max_tokens: int, max_messages: int) -> _Window:
        """The uncached read: the newest `max_messages` active messages down to the first that
        does not fit `max_tokens`, that one included."""
        rows = self.db.execute(
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

    def _catch_up(self, chat_id: int, window: _Window, max_messages: int) -> _Window:
        """The window plus the active rows added since it was read (at most `max_messages`)."""
        newest = window.messages[-1].id if window.messages else 0
        rows = self.db.execute(
            "SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0 AND id > ?"
            " ORDER BY id DESC LIMIT ?", [chat_id, newest, max_messages]).fetchall()
        if not rows:
            return window
        added = [HistoryMessage(*row) for row in reversed(rows)]
        tokens = sum(row[3] for row in rows)
        if len(rows) == max_messages:  # there may be more: the older messages are not needed now
            return _Window(added, tokens, False)
        return _Window(window.messages + added, window.tokens + tokens, window.complete)

    def _other_writers_checked(self) -> int:
        """Drop every window if another connection committed since the last look."""
        version = self._data_version_now()
        if version != self._data_version:
            self._forget_all()
            self._data_version = version
        return version

    def _data_version_now(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

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

    def count_active(self, chat_id: int) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM messages WHERE chat_id = ? AND archived = 0", [chat_id])
        return int(row.fetchone()[0])

    def older_than(self, chat_id: int, message_id: int, *, limit: int = 1000) -> list[HistoryMessage]:
        rows = self.db.execute(
            "SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0 AND id < ?"
            " ORDER BY id LIMIT ?", [chat_id, message_id, limit]).fetchall()
        return [HistoryMessage(*r) for r in rows]

    def archive_through(self, chat_id: int, message_id: int) -> int:
        """Move messages up to `message_id` out of the active conversation (kept in the table)."""
        cursor = self.db.execute("UPDATE messages SET archived = 1 WHERE chat_id = ? AND archived = 0 AND id <= ?",
                                 [chat_id, message_id])
        window = self._windows.get(chat_id)
        if window is not None:
            if self.db.conn.in_transaction:
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
        return cursor.rowcount

    def archive_cursor(self, chat_id: int) -> int:
        """The newest message id already copied into a history archive artifact (0 if none)."""
        return read_counter(self.db, f"{ARCHIVE_CURSOR}{chat_id}")

    def advance_archive_cursor(self, chat_id: int, message_id: int) -> None:
        """Record that messages up to `message_id` are in an archive (the cursor never moves back)."""
        self.db.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
                        [f"{ARCHIVE_CURSOR}{chat_id}", message_id])

    def start_new(self, chat_id: int) -> int:
        cursor = self.db.execute("UPDATE messages SET archived = 1 WHERE chat_id = ? AND archived = 0", [chat_id])
        self._forget(chat_id)
        return cursor.rowcount


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


class Chats:
    """Per-chat delivery facts: blocked by the user, and the last prompt's size."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def mark_blocked(self, chat_id: int, reason: str, *, now: str) -> None:
        self.db.execute(
            "INSERT INTO chats(chat_id, blocked_at, blocked_reason, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(chat_id) DO UPDATE SET blocked_at = excluded.blocked_at,"
            " blocked_reason = excluded.blocked_reason, updated_at = excluded.updated_at",
            [chat_id, now, reason, now])

    def unblock(self, chat_id: int, *, now: str) -> None:
        self.db.execute("UPDATE chats SET blocked_at = NULL, blocked_reason = NULL, updated_at = ? WHERE chat_id = ?",
                        [now, chat_id])

    def is_blocked(self, chat_id: int) -> bool:
        row = self.db.execute("SELECT blocked_at FROM chats WHERE chat_id = ?", [chat_id]).fetchone()
        return bool(row and row[0])

    def record_prompt(self, chat_id: int, *, tokens: int, budget: int, trace_id: str, now: str) -> None:
        self.db.execute(
            "INSERT INTO chats(chat_id, last_prompt_tokens, last_prompt_budget, last_trace_id, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(chat_id) DO UPDATE SET last_prompt_tokens = excluded.last_prompt_tokens,"
            " last_prompt_budget = excluded.last_prompt_budget, last_trace_id = excluded.last_trace_id,"
            " updated_at = excluded.updated_at", [chat_id, tokens, budget, trace_id, now])

    def last_prompt(self, chat_id: int) -> tuple[int, int] | None:
        row = self.db.execute("SELECT last_prompt_tokens, last_prompt_budget FROM chats WHERE chat_id = ?",
                              [chat_id]).fetchone()
        return (row[0], row[1]) if row and row[0] is not None else None
