"""Per-chat delivery facts in SQLite (the `chats` table)."""

from __future__ import annotations

import sqlite_utils


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
