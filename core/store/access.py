"""Access decisions and pairing codes (tables `access_subjects`, `pairing_codes`): AccessStore."""

from __future__ import annotations

from core.store.engine import Database
from core.store.interfaces import AccessDecision, PairingCode

_DECISION_COLUMNS = "subject_id, kind, status, name, username, decided_by, decided_at"
_CODE_COLUMNS = "code, subject_id, kind, name, username, status, created_at, expires_at"


class AccessRecords:
    """The operator's decisions (one row per user or group) and the codes strangers were given."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def decision(self, subject_id: int) -> AccessDecision | None:
        row = await self.db.fetchone(f"SELECT {_DECISION_COLUMNS} FROM access_subjects WHERE subject_id = ?",
                              [subject_id])
        return AccessDecision(*row) if row else None

    async def statuses(self, subject_ids: tuple[int, ...]) -> dict[int, str]:
        if not subject_ids:
            return {}
        marks = ", ".join("?" for _ in subject_ids)
        rows = await self.db.fetchall(f"SELECT subject_id, status FROM access_subjects WHERE subject_id IN ({marks})",
                               list(subject_ids))
        return {int(r[0]): str(r[1]) for r in rows}

    async def decide(self, *, subject_id: int, kind: str, status: str, name: str, username: str | None,
               decided_by: str, now: str) -> None:
        async with self.db.transaction():
            await self.db.execute(
                f"INSERT INTO access_subjects({_DECISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(subject_id) DO UPDATE SET kind = excluded.kind, status = excluded.status,"
                " name = excluded.name, username = excluded.username, decided_by = excluded.decided_by,"
                " decided_at = excluded.decided_at", [subject_id, kind, status, name, username, decided_by, now])
            await self.db.execute("UPDATE pairing_codes SET status = ? WHERE subject_id = ? AND status = 'pending'",
                            [status, subject_id])

    async def decisions(self, status: str, limit: int = 100) -> list[AccessDecision]:
        rows = await self.db.fetchall(f"SELECT {_DECISION_COLUMNS} FROM access_subjects WHERE status = ?"
                               " ORDER BY decided_at DESC LIMIT ?", [status, limit])
        return [AccessDecision(*r) for r in rows]

    async def add_code(self, code: PairingCode) -> bool:
        changed = await self.db.execute(
            f"INSERT INTO pairing_codes({_CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(code) DO NOTHING",
            [code.code, code.subject_id, code.kind, code.name, code.username, code.status, code.created_at,
             code.expires_at])
        return changed == 1

    async def pending_code(self, subject_id: int, *, now: str) -> PairingCode | None:
        row = await self.db.fetchone(f"SELECT {_CODE_COLUMNS} FROM pairing_codes WHERE subject_id = ? AND status = 'pending'"
                              " AND expires_at > ? ORDER BY created_at DESC LIMIT 1", [subject_id, now])
        return PairingCode(*row) if row else None

    async def code(self, code: str) -> PairingCode | None:
        row = await self.db.fetchone(f"SELECT {_CODE_COLUMNS} FROM pairing_codes WHERE code = ?", [code])
        return PairingCode(*row) if row else None

    async def pending_count(self, *, now: str) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM pairing_codes WHERE status = 'pending' AND expires_at > ?",
                              [now])
        return int(row[0])

    async def pending_codes(self, *, now: str, limit: int = 50) -> list[PairingCode]:
        rows = await self.db.fetchall(f"SELECT {_CODE_COLUMNS} FROM pairing_codes WHERE status = 'pending' AND expires_at > ?"
                               " ORDER BY created_at LIMIT ?", [now, limit])
        return [PairingCode(*r) for r in rows]

    async def codes_since(self, subject_id: int, *, since: str) -> int:
        row = await self.db.fetchone("SELECT COUNT(*) FROM pairing_codes WHERE subject_id = ? AND created_at >= ?",
                              [subject_id, since])
        return int(row[0])

    async def prune(self, *, before: str) -> int:
        return await self.db.execute("DELETE FROM pairing_codes WHERE created_at < ? AND (status != 'pending'"
                                     " OR expires_at < ?)", [before, before])
