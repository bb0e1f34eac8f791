"""The model each chat chose with /model (the `chat_models` table; no row: the default)."""

from __future__ import annotations

import sqlite_utils


class ChatModels:
    """Per-chat model choice (ChatModelStore)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def get(self, chat_id: int) -> str | None:
        row = self.db.execute("SELECT model FROM chat_models WHERE chat_id = ?", [chat_id]).fetchone()
        return row[0] if row else None

    def set(self, chat_id: int, model: str, *, now: str) -> None:
        self.db.execute("INSERT INTO chat_models(chat_id, model, updated_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(chat_id) DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
                        [chat_id, model, now])

    def clear(self, chat_id: int) -> None:
        self.db.execute("DELETE FROM chat_models WHERE chat_id = ?", [chat_id])
