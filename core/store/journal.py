"""The inbox journal (the `journal` table)."""

from __future__ import annotations

import json
from typing import Any

from core.store.engine import Database
from core.store.interfaces import JournalEntry


class Journal:
    """The inbox: every accepted update, keyed by update_id, written before it is processed.

    States: received -> processing -> replied | failed | ignored. A redelivered update_id is
    refused by the primary key; rows left in received/processing by a crash are resumed.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, *, update_id: int, chat_id: int | None, user_id: int | None, kind: str,
                     raw: dict[str, Any], trace_id: str | None, now: str) -> bool:
        """Record a new update; False when this update_id was seen before (a duplicate)."""
        changed = await self.db.execute(
            "INSERT INTO journal(update_id, chat_id, user_id, kind, state, raw, trace_id,"
            " received_at, updated_at) VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [update_id, chat_id, user_id, kind, json.dumps(raw, ensure_ascii=False), trace_id, now, now])
        return changed == 1

    async def mark(self, update_id: int, state: str, *, now: str, error: str | None = None,
                   trace_id: str | None = None) -> None:
        await self.db.execute(
            "UPDATE journal SET state = ?, updated_at = ?, error = COALESCE(?, error),"
            " trace_id = COALESCE(?, trace_id), attempts = attempts + CASE WHEN ? = 'processing' THEN 1 ELSE 0 END"
            " WHERE update_id = ?",
            [state, now, error, trace_id, state, update_id])

    async def state(self, update_id: int) -> str | None:
        row = await self.db.fetchone("SELECT state FROM journal WHERE update_id = ?", [update_id])
        return row[0] if row else None

    async def unfinished(self, limit: int = 1000) -> list[JournalEntry]:
        rows = await self.db.fetchall(
            "SELECT update_id, chat_id, user_id, kind, state, raw, trace_id, attempts FROM journal"
            " WHERE state IN ('received', 'processing') ORDER BY update_id LIMIT ?", [limit])
        return [JournalEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    async def prune(self, *, before: str) -> int:
        """Drop finished rows older than `before`; the journal only needs recent ids for dedupe."""
        return await self.db.execute(
            "DELETE FROM journal WHERE state NOT IN ('received', 'processing') AND updated_at < ?", [before])
