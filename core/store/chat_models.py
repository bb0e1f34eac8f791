"""The model each chat chose with /model (the `chat_models` table; no row: the default)."""

from __future__ import annotations

from core.store.engine import Database


class ChatModels:
    """Per-chat model choice (ChatModelStore)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, chat_id: int) -> str | None:
        row = await self.db.fetchone("SELECT model FROM chat_models WHERE chat_id = ?", [chat_id])
        return row[0] if row else None

    async def set(self, chat_id: int, model: str, *, now: str) -> None:
        await self.db.execute("INSERT INTO chat_models(chat_id, model, updated_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(chat_id) DO UPDATE SET model = excluded.model, updated_at = excluded.updated_at",
                        [chat_id, model, now])

    async def clear(self, chat_id: int) -> None:
        await self.db.execute("DELETE FROM chat_models WHERE chat_id = ?", [chat_id])
