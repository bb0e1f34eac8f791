"""The chats that turned spoken answers on with /voice on (the `voice_replies` table; no row: off)."""

from __future__ import annotations

from core.store.engine import Database


class VoiceReplies:
    """Per-chat spoken answers (VoiceReplyStore)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def is_on(self, chat_id: int) -> bool:
        return await self.db.fetchone("SELECT 1 FROM voice_replies WHERE chat_id = ?", [chat_id]) is not None

    async def set(self, chat_id: int, on: bool, *, now: str) -> None:
        if on:
            await self.db.execute("INSERT INTO voice_replies(chat_id, updated_at) VALUES (?, ?)"
                            " ON CONFLICT(chat_id) DO UPDATE SET updated_at = excluded.updated_at", [chat_id, now])
        else:
            await self.db.execute("DELETE FROM voice_replies WHERE chat_id = ?", [chat_id])
