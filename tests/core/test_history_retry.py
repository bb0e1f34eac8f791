"""What /retry asks of the history: the last exchange, set aside and put back, or deleted, with the
per-chat read cache of `History.recent` staying exact through each."""

from __future__ import annotations

from core.store import History, open_sqlite

CHAT, OTHER = 1, 2


async def add(history: History, chat_id: int, role: str, content: str) -> int:
    return await history.append(chat_id=chat_id, role=role, content=content, tokens=5, trace_id=None, update_id=None,
                          now="2026-01-01T00:00:00+00:00")


async def contents(history: History, chat_id: int = CHAT) -> list[str]:
    return [m.content for m in await history.recent(chat_id, max_tokens=10_000)]


async def test_last_exchange_is_the_last_user_message_and_what_followed() -> None:
    history = History(open_sqlite(":memory:"))
    assert await history.last_exchange(CHAT) == []
    await add(history, CHAT, "user", "q1")
    await add(history, CHAT, "assistant", "a1")
    await add(history, CHAT, "user", "q2")
    assert [m.content for m in await history.last_exchange(CHAT)] == ["q2"]  # not answered yet
    await add(history, CHAT, "assistant", "a2")
    await add(history, OTHER, "user", "elsewhere")
    assert [(m.role, m.content) for m in await history.last_exchange(CHAT)] == [("user", "q2"), ("assistant", "a2")]
    await history.start_new(CHAT)
    assert await history.last_exchange(CHAT) == []  # /new set it aside: nothing to retry


async def test_set_aside_put_back_and_delete_keep_the_cached_window_exact() -> None:
    history = History(open_sqlite(":memory:"))
    for role, content in [("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2")]:
        await add(history, CHAT, role, content)
    await add(history, OTHER, "user", "elsewhere")
    assert await contents(history) == ["q1", "a1", "q2", "a2"]  # cached now
    ids = [m.id for m in await history.last_exchange(CHAT)]
    assert await history.set_aside(CHAT, ids) == 2
    assert await contents(history) == ["q1", "a1"]
    assert await history.set_aside(CHAT, ids, aside=False) == 2
    assert await contents(history) == ["q1", "a1", "q2", "a2"]
    await history.set_aside(CHAT, ids)
    await add(history, CHAT, "user", "q2")
    await add(history, CHAT, "assistant", "a2, better")
    assert await history.delete(CHAT, ids) == 2
    assert await contents(history) == ["q1", "a1", "q2", "a2, better"]
    assert await history.delete(OTHER, ids) == 0 and await contents(history, OTHER) == ["elsewhere"]  # ids of another chat
    assert history.db.conn.execute("SELECT COUNT(*) FROM messages WHERE chat_id = ?", [CHAT]).fetchone()[0] == 4
