"""Per-chat delivery facts (the `chats` table)."""

from __future__ import annotations

from core.store.engine import Database


class Chats:
    """Per-chat delivery facts: blocked by the user, and the last prompt's size."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def mark_blocked(self, chat_id: int, reason: str, *, now: str) -> None:
        await self.db.execute(
            "INSERT INTO chats(chat_id, blocked_at, blocked_reason, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(chat_id) DO UPDATE SET blocked_at = excluded.blocked_at,"
            " blocked_reason = excluded.blocked_reason, updated_at = excluded.updated_at",
            [chat_id, now, reason, now])

    async def unblock(self, chat_id: int, *, now: str) -> None:
        await self.db.execute("UPDATE chats SET blocked_at = NULL, blocked_reason = NULL, updated_at = ? WHERE chat_id = ?",
                        [now, chat_id])

    async def is_blocked(self, chat_id: int) -> bool:
        row = await self.db.fetchone("SELECT blocked_at FROM chats WHERE chat_id = ?", [chat_id])
        return bool(row and row[0])

    async def record_prompt(self, chat_id: int, *, tokens: int, budget: int, trace_id: str, now: str) -> None:
        await self.db.execute(
            "INSERT INTO chats(chat_id, last_prompt_tokens, last_prompt_budget, last_trace_id, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(chat_id) DO UPDATE SET last_prompt_tokens = excluded.last_prompt_tokens,"
            " last_prompt_budget = excluded.last_prompt_budget, last_trace_id = excluded.last_trace_id,"
            " updated_at = excluded.updated_at", [chat_id, tokens, budget, trace_id, now])

    async def last_prompt(self, chat_id: int) -> tuple[int, int] | None:
        row = await self.db.fetchone("SELECT last_prompt_tokens, last_prompt_budget FROM chats WHERE chat_id = ?",
                              [chat_id])
        return (row[0], row[1]) if row and row[0] is not None else None
