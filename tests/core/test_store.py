"""Numbered migrations and the journal/history repositories, on in-memory and file databases."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from core.contracts import ChatMessage
from core.store import History, HistoryMessage, Journal, SQLiteDatabase, migrations, open_sqlite

EXPECTED = {
    "journal": {"update_id", "chat_id", "user_id", "kind", "state", "raw", "trace_id", "attempts", "error",
                "received_at", "updated_at"},
    "messages": {"id", "chat_id", "role", "content", "tokens", "trace_id", "update_id", "created_at", "archived"},
    "hot_state": {"chat_id", "state_json", "tokens", "trace_id", "updated_at"},
    "artifacts": {"sha256", "media_type", "size_bytes", "tokens", "created_at"},
    "usage": {"id", "at", "day", "month", "trace_id", "chat_id", "user_id", "model", "input_tokens",
              "output_tokens", "total_tokens", "estimated", "cost_usd", "wasted"},
    "usage_totals": {"scope", "period", "total_tokens", "cost_usd", "attempts"},
    "dlq": {"id", "trace_id", "chat_id", "user_id", "update_id", "inbound_json", "error_kind", "error_message",
            "attempts_json", "first_failed_at", "last_failed_at", "status", "replayable", "replay_trace_id",
            "updated_at"},
    "outbox": {"id", "kind", "chat_id", "text", "parse_mode", "trace_id", "dedupe_key", "status", "attempts",
               "next_attempt_at", "last_error", "created_at", "sent_at", "reply_markup"},
    "access_subjects": {"subject_id", "kind", "status", "name", "username", "decided_by", "decided_at"},
    "pairing_codes": {"code", "subject_id", "kind", "name", "username", "status", "created_at", "expires_at"},
}


def test_migrations_create_the_expected_columns() -> None:
    db = open_sqlite(":memory:").sqlite
    for table, columns in EXPECTED.items():
        assert set(db[table].columns_dict) == columns, table
    assert [m.name for m in migrations.applied(db)] == [m.name for m in migrations._migrations]


def test_migrations_are_safe_to_rerun(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    open_sqlite(path).conn.close()
    db = open_sqlite(path).sqlite
    assert migrations.pending(db) == []
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_journal_drops_duplicates_and_lists_unfinished() -> None:
    journal = Journal(open_sqlite(":memory:"))
    assert await journal.accept(update_id=1, chat_id=5, user_id=5, kind="update", raw={"update_id": 1}, trace_id=None,
                          now="2026-01-01T00:00:00")
    assert not await journal.accept(update_id=1, chat_id=5, user_id=5, kind="update", raw={"update_id": 1},
                              trace_id=None, now="2026-01-01T00:00:01")
    await journal.accept(update_id=2, chat_id=5, user_id=5, kind="update", raw={"update_id": 2}, trace_id=None,
                   now="2026-01-01T00:00:02")
    await journal.mark(1, "replied", now="2026-01-01T00:00:03")
    assert [e.update_id for e in await journal.unfinished()] == [2]
    assert await journal.state(1) == "replied"


async def test_history_recent_is_bounded_by_tokens_and_ordered() -> None:
    history = History(open_sqlite(":memory:"))
    for index in range(50):
        await history.append(chat_id=1, role="user" if index % 2 == 0 else "assistant", content=f"m{index}", tokens=10,
                       trace_id=None, update_id=index, now="2026-01-01T00:00:00")
    recent = await history.recent(1, max_tokens=95)
    assert [m.content for m in recent] == [f"m{i}" for i in range(41, 50)]
    assert await history.recent(2, max_tokens=1000) == []


def test_failed_turns_find_their_usage_rows_by_index() -> None:
    db = open_sqlite(":memory:")
    plan = [row[3] for row in db.conn.execute(
        "EXPLAIN QUERY PLAN UPDATE usage SET wasted = 1 WHERE trace_id = 'x'").fetchall()]
    assert any("USING INDEX usage_trace" in step for step in plan), plan


# History's per-chat cache ----------------------------------------------------------------------

NOW = "2026-01-01T00:00:00"


def uncached_recent(db: SQLiteDatabase, chat_id: int, *, max_tokens: int,
                    max_messages: int = 400) -> list[HistoryMessage]:
    """What `History.recent` answered before it cached anything: straight from the table."""
    rows = db.conn.execute("SELECT id, role, content, tokens FROM messages WHERE chat_id = ? AND archived = 0"
                      " ORDER BY id DESC LIMIT ?", [chat_id, max_messages]).fetchall()
    kept, used = [], 0
    for row in rows:
        if used + row[3] > max_tokens:
            break
        used += row[3]
        kept.append(HistoryMessage(*row))
    return kept[::-1]


async def add(history: History, chat_id: int, count: int, *, tokens: int = 10) -> list[int]:
    return [await history.append(chat_id=chat_id, role="user" if n % 2 == 0 else "assistant", content=f"c{chat_id} m{n}",
                           tokens=tokens, trace_id=None, update_id=None, now=NOW) for n in range(count)]


async def assert_exact(history: History, chat_id: int, *, max_tokens: int = 10_000, max_messages: int = 400) -> None:
    expected = uncached_recent(history.db, chat_id, max_tokens=max_tokens, max_messages=max_messages)
    assert await history.recent(chat_id, max_tokens=max_tokens, max_messages=max_messages) == expected
    # And once more from the window the first call left.
    assert await history.recent(chat_id, max_tokens=max_tokens, max_messages=max_messages) == expected


async def full_reads(history: History, chat_id: int, **limits: int) -> int:
    """How many times `recent` read the chat's active rows from the start (not only the new ones)."""
    statements: list[str] = []
    history.db.conn.set_trace_callback(statements.append)
    try:
        await history.recent(chat_id, **limits)
    finally:
        history.db.conn.set_trace_callback(None)
    reads = [s for s in statements if s.startswith("SELECT id, role, content, tokens FROM messages")]
    return sum("AND id > " not in s for s in reads)


async def test_history_cache_reads_only_new_rows_and_stays_exact_across_appends() -> None:
    db = open_sqlite(":memory:")
    history = History(db)
    await add(history, 1, 30)
    await assert_exact(history, 1, max_messages=20)
    await add(history, 1, 2)
    assert await full_reads(history, 1, max_tokens=10_000, max_messages=20) == 0
    await assert_exact(history, 1, max_messages=20)
    await assert_exact(history, 1, max_tokens=95)  # cut by tokens: the window keeps the first that did not fit
    assert await full_reads(history, 1, max_tokens=95) == 0
    await add(history, 1, 1)
    assert await full_reads(history, 1, max_tokens=95) == 0
    await assert_exact(history, 1, max_tokens=95)
    await assert_exact(history, 1, max_messages=25)  # further back than the window holds: read again
    await assert_exact(history, 1, max_tokens=-1)
    assert await history.recent(1, max_tokens=10_000, max_messages=0) == []
    assert await history.recent(1, max_tokens=10_000, max_messages=-1) == uncached_recent(db, 1, max_tokens=10_000,
                                                                                     max_messages=-1)
    # More new rows than one call takes: the rows it skipped are not taken for read later.
    await assert_exact(history, 2)
    await add(history, 2, 5)
    await assert_exact(history, 2, max_messages=3)
    await assert_exact(history, 2)


async def test_history_cache_stays_exact_across_archive_through_and_start_new() -> None:
    history = History(open_sqlite(":memory:"))
    ids = await add(history, 1, 40)
    await assert_exact(history, 1, max_messages=30)
    await history.archive_through(1, ids[4])  # older than the window
    await assert_exact(history, 1, max_messages=30)
    await history.archive_through(1, ids[15])  # into the window: what stays is every active message
    assert await full_reads(history, 1, max_tokens=10_000, max_messages=30) == 0
    await assert_exact(history, 1, max_messages=30)
    more = await add(history, 1, 3)
    await history.archive_through(1, more[0])  # past the window, into rows it has not read yet
    await assert_exact(history, 1, max_messages=30)
    assert [m.id for m in await history.recent(1, max_tokens=10_000)] == more[1:]
    assert await history.start_new(1) == 2
    await assert_exact(history, 1)
    assert await history.recent(1, max_tokens=10_000) == []
    fresh = await add(history, 1, 2)
    assert [m.id for m in await history.recent(1, max_tokens=10_000)] == fresh


async def test_history_cache_is_not_ahead_of_a_rolled_back_transaction() -> None:
    db = open_sqlite(":memory:")
    history = History(db)
    ids = await add(history, 1, 20)
    await assert_exact(history, 1)
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await add(history, 1, 2)
            await history.archive_through(1, ids[9])
            # Inside the transaction the uncommitted state is what a read sees...
            assert [m.id for m in await history.recent(1, max_tokens=10_000)][:1] == [ids[10]]
            assert len(await history.recent(1, max_tokens=10_000)) == 12
            raise RuntimeError("roll back")
    # ...and after the rollback, neither the archive nor the two rows it read are remembered.
    assert [m.id for m in await history.recent(1, max_tokens=10_000)] == ids
    await assert_exact(history, 1)
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await history.start_new(1)
            raise RuntimeError("roll back")
    assert [m.id for m in await history.recent(1, max_tokens=10_000)] == ids
    async with db.transaction():  # committed: the same writes count
        await history.archive_through(1, ids[9])
        await add(history, 1, 1)
    await assert_exact(history, 1)
    assert len(await history.recent(1, max_tokens=10_000)) == 11


def assert_accounted(history: History) -> None:
    windows = history._windows.values()
    assert history._cached_tokens == sum(m.tokens for w in windows for m in w.messages)
    assert history._cached_tokens == sum(w.tokens for w in windows)
    assert history._cached_messages == sum(len(w.messages) for w in windows)


async def test_history_cache_evicts_the_least_recently_read_chats() -> None:
    db = open_sqlite(":memory:")
    history = History(db, cache_chats=3, cache_tokens=250)
    by_count = History(db, cache_messages=12)
    for chat_id in range(1, 11):
        await add(history, chat_id, 6)
    for chat_id in range(1, 11):
        await assert_exact(history, chat_id)
        assert len(history._windows) <= 3
    assert list(history._windows) == [8, 9, 10]
    await assert_exact(history, 8)
    assert list(history._windows) == [9, 10, 8]
    for chat_id in (1, 2, 3):
        await assert_exact(by_count, chat_id)
    assert list(by_count._windows) == [2, 3] and by_count._cached_messages == 12
    await add(history, 5, 20)  # 26 messages of 10 tokens: more than the whole cache may hold
    await assert_exact(history, 5)
    assert 5 not in history._windows and history._cached_tokens <= 250
    assert_accounted(history)
    for chat_id in range(1, 11):  # evicted chats are read again, exactly
        await add(history, chat_id, 1)
        await assert_exact(history, chat_id)
        assert_accounted(history)
        assert history._cached_tokens <= 250


async def test_history_cache_sees_commits_of_other_connections(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    ours, theirs = History(open_sqlite(path)), History(open_sqlite(path))  # e.g. `python -m bot dlq replay`
    ids = await add(ours, 1, 20)
    await assert_exact(ours, 1)
    await theirs.archive_through(1, ids[9])
    await assert_exact(ours, 1)
    assert len(await ours.recent(1, max_tokens=10_000)) == 10
    await theirs.start_new(1)
    assert await ours.recent(1, max_tokens=10_000) == []
    await add(theirs, 1, 3)
    await assert_exact(ours, 1)
    assert len(await ours.recent(1, max_tokens=10_000)) == 3


async def test_history_cache_matches_the_table_under_random_operations() -> None:
    rng = random.Random(20260101)
    db = open_sqlite(":memory:")
    history = History(db, cache_chats=2, cache_messages=30, cache_tokens=400)
    chats = (1, 2, 3)
    for _ in range(3000):
        chat_id = rng.choice(chats)
        action = rng.random()
        if action < 0.35:
            await history.append(chat_id=chat_id, role="user", content="x", tokens=rng.choice((0, 1, 5, 20, 60)),
                           trace_id=None, update_id=None, now=NOW)
        elif action < 0.45:
            active = [m.id for m in uncached_recent(db, chat_id, max_tokens=10**9, max_messages=-1)]
            if active:
                await history.archive_through(chat_id, rng.choice(active))
        elif action < 0.47:
            await history.start_new(chat_id)
        elif action < 0.52:
            with contextlib.suppress(RuntimeError):
                async with db.transaction():
                    await add(history, chat_id, rng.randint(0, 3))
                    if rng.random() < 0.5:
                        await history.archive_through(chat_id, rng.randint(0, 10**4))
                    await history.recent(chat_id, max_tokens=100)
                    if rng.random() < 0.5:
                        raise RuntimeError("roll back")
        else:
            max_tokens, max_messages = rng.choice((100, 150, 10**6)), rng.choice((3, 8, 400))
            assert await history.recent(chat_id, max_tokens=max_tokens, max_messages=max_messages) == uncached_recent(
                db, chat_id, max_tokens=max_tokens, max_messages=max_messages)
        assert_accounted(history)
        assert history._cached_tokens <= 400 and history._cached_messages <= 30


async def test_history_messages_are_validated_once_for_the_prompt() -> None:
    history = History(open_sqlite(":memory:"))
    await add(history, 1, 4)
    first, again = await history.recent(1, max_tokens=10_000), await history.recent(1, max_tokens=10_000)
    assert [m.chat_message for m in first] == [ChatMessage(role=m.role, content=m.content) for m in first]
    assert all(a.chat_message is b.chat_message for a, b in zip(first, again, strict=True))
