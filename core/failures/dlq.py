"""The dead-letter queue: turns that could not be completed, kept to be run again.

One row per failed inbound message (keyed by its trace id while it is pending), bounded by
`max_entries`. Statuses: pending -> replaying -> replayed, or back to pending when a replay
fails; pending -> discarded (by the operator) or resolved (answered some other way).
`claim_for_replay` is a single conditional UPDATE, so two replayers (auto replay after a
recovery and an operator's /replay) can never run the same entry twice.

`now` arguments are ISO-8601 strings in the gateway's one format (`Clock.iso()`), which sort
in time order.
"""

from __future__ import annotations

import json
from typing import Any

from core.contracts import DlqEntry, InboundMessage
from core.failures.taxonomy import OUTAGE_KINDS
from core.store import Database, bump_counter, read_counter
from core.store.interfaces import DlqRow

MAX_ATTEMPTS_KEPT = 50  # per entry; older attempts are dropped from attempts_json
EVICTED_COUNTER = "dlq_evicted"
ACTIVE = ("pending", "replaying")
_COLUMNS = ("id, trace_id, chat_id, user_id, update_id, inbound_json, error_kind, error_message, attempts_json,"
            " first_failed_at, last_failed_at, status, replayable, replay_trace_id, updated_at")


def _row(values: tuple[Any, ...]) -> DlqRow:
    (id_, trace_id, chat_id, user_id, update_id, inbound_json, error_kind, error_message, attempts_json,
     first_failed_at, last_failed_at, status, replayable, replay_trace_id, updated_at) = values
    # Strict models accept ISO datetimes from JSON (not from a dict), so parse the JSON text.
    inbound = InboundMessage.model_validate_json(inbound_json)
    return DlqRow(id_, trace_id, chat_id, user_id, update_id, inbound, error_kind, error_message,
                  json.loads(attempts_json), first_failed_at, last_failed_at, status, bool(replayable),
                  replay_trace_id, updated_at)


def _merge(old_json: str, new: list[dict[str, Any]]) -> str:
    return json.dumps((json.loads(old_json) + new)[-MAX_ATTEMPTS_KEPT:], ensure_ascii=False, default=str)


class DeadLetterQueue:
    """The `dlq` table behind a narrow interface (a PostgreSQL twin would keep these methods)."""

    def __init__(self, db: Database, *, max_entries: int = 1000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.db = db
        self.max_entries = max_entries

    async def add(self, entry: DlqEntry, *, attempts: list[dict[str, Any]], now: str, update_id: int | None = None) -> int:
        """Record a failed turn; a second failure of the same pending turn updates its row.
        Each attempt dict without an `at` gets `now` (e.g. `Attempt._asdict()` has only at_s)."""
        update_id = entry.inbound.update_id if update_id is None else update_id
        # An attempt's own `at_s` is monotonic; stamp the wall time the turn failed for operators.
        attempts = [{"at": now, **attempt} for attempt in attempts]
        async with self.db.transaction():
            existing = await self.db.fetchone(
                "SELECT id, attempts_json FROM dlq WHERE trace_id = ? AND status IN (?, ?) ORDER BY id LIMIT 1",
                [entry.trace_id, *ACTIVE])
            if existing is not None:
                entry_id = int(existing[0])
                await self.db.execute(
                    "UPDATE dlq SET error_kind = ?, error_message = ?, attempts_json = ?, last_failed_at = ?,"
                    " replayable = ?, updated_at = ? WHERE id = ?",
                    [entry.error_kind, entry.error_message, _merge(existing[1], attempts), now,
                     int(entry.replayable), now, entry_id])
                return entry_id
            entry_id = await self.db.insert_id(
                "INSERT INTO dlq(trace_id, chat_id, user_id, update_id, inbound_json, error_kind, error_message,"
                " attempts_json, first_failed_at, last_failed_at, status, replayable, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                [entry.trace_id, entry.chat_id, entry.user_id, update_id, entry.inbound.model_dump_json(),
                 entry.error_kind, entry.error_message, _merge("[]", attempts), now, now,
                 int(entry.replayable), now])
            await self._evict(keep_id=entry_id)
        return entry_id

    async def _evict(self, *, keep_id: int) -> None:
        """Over the bound: drop the oldest finished rows first, then the oldest pending ones.
        A row being replayed is never dropped (its replayer still has to report back)."""
        total = int((await self.db.fetchone("SELECT COUNT(*) FROM dlq"))[0])
        excess = total - self.max_entries
        evicted = 0
        for condition in ("status NOT IN ('pending', 'replaying')", "status = 'pending'"):
            if excess - evicted <= 0:
                break
            evicted += await self.db.execute(
                f"DELETE FROM dlq WHERE id IN (SELECT id FROM dlq WHERE {condition} AND id != ?"
                " ORDER BY id LIMIT ?)", [keep_id, excess - evicted])
        if evicted:
            await bump_counter(self.db, EVICTED_COUNTER, evicted)

    async def get(self, entry_id: int) -> DlqRow | None:
        row = await self.db.fetchone(f"SELECT {_COLUMNS} FROM dlq WHERE id = ?", [entry_id])
        return _row(row) if row else None

    async def list(self, status: str | None = "pending", limit: int = 50) -> list[DlqRow]:
        """Newest first; `status=None` lists every status."""
        if status is None:
            rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM dlq ORDER BY id DESC LIMIT ?", [limit])
        else:
            rows = await self.db.fetchall(f"SELECT {_COLUMNS} FROM dlq WHERE status = ? ORDER BY id DESC LIMIT ?",
                                   [status, limit])
        return [_row(r) for r in rows]

    async def depth(self) -> int:
        """Pending entries."""
        return int((await self.db.fetchone("SELECT COUNT(*) FROM dlq WHERE status = 'pending'"))[0])

    async def counts(self) -> dict[str, int]:
        """Entries per status, for /status and doctor."""
        rows = await self.db.fetchall("SELECT status, COUNT(*) FROM dlq GROUP BY status")
        return {status: int(count) for status, count in rows}

    async def claim_for_replay(self, entry_id: int, *, now: str) -> DlqRow | None:
        """Atomically pending -> replaying; None when the entry is not pending (already claimed,
        replayed, discarded or gone), so a replay is never run twice."""
        changed = await self.db.execute(
            "UPDATE dlq SET status = 'replaying', updated_at = ? WHERE id = ? AND status = 'pending'", [now, entry_id])
        return await self.get(entry_id) if changed == 1 else None

    async def record_replay_error(self, entry_id: int, *, error_kind: str, error_message: str, replayable: bool,
                            now: str) -> bool:
        """A claimed replay failed: the entry now carries that failure's kind, and stays replayable
        automatically only if it was again the provider being down (so a message that fails for
        another reason is not replayed again and again: it waits for the operator)."""
        changed = await self.db.execute(
            "UPDATE dlq SET error_kind = ?, error_message = ?, replayable = ?, updated_at = ?"
            " WHERE id = ? AND status = 'replaying'",
            [error_kind, error_message, int(replayable), now, entry_id])
        return changed == 1

    async def finish_replay(self, entry_id: int, *, ok: bool, trace_id: str, now: str, error: str | None = None) -> bool:
        """End a claimed replay: ok -> replayed; otherwise back to pending with the attempt noted."""
        if ok:
            changed = await self.db.execute(
                "UPDATE dlq SET status = 'replayed', replay_trace_id = ?, updated_at = ? WHERE id = ? AND status = 'replaying'",
                [trace_id, now, entry_id])
            return changed == 1
        async with self.db.transaction():
            row = await self.db.fetchone("SELECT attempts_json FROM dlq WHERE id = ? AND status = 'replaying'",
                                  [entry_id])
            if row is None:
                return False
            attempt = {"replay": True, "trace_id": trace_id, "at": now, "error": error}
            await self.db.execute(
                "UPDATE dlq SET status = 'pending', replay_trace_id = ?, attempts_json = ?, last_failed_at = ?,"
                " updated_at = ? WHERE id = ?", [trace_id, _merge(row[0], [attempt]), now, now, entry_id])
        return True

    async def release_stale_replays(self, *, before: str) -> int:
        """Put replays claimed before `before` back to pending (their process died); run at start."""
        changed = await self.db.execute(
            "UPDATE dlq SET status = 'pending', updated_at = ? WHERE status = 'replaying' AND updated_at < ?",
            [before, before])
        return changed

    async def _set_status(self, entry_id: int, status: str, *, now: str) -> bool:
        changed = await self.db.execute("UPDATE dlq SET status = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
                                 [status, now, entry_id])
        return changed == 1

    async def discard(self, entry_id: int, *, now: str) -> bool:
        """The operator gives up on a pending entry; False if it was not pending."""
        return await self._set_status(entry_id, "discarded", now=now)

    async def resolve(self, entry_id: int, *, now: str) -> bool:
        """A pending entry was answered some other way (e.g. the user sent it again)."""
        return await self._set_status(entry_id, "resolved", now=now)

    async def replayable_outage_entries(self, limit: int = 50) -> list[DlqRow]:
        """Pending, replayable entries caused by a provider outage, oldest first (replayed
        automatically once the circuit closes)."""
        kinds = sorted(OUTAGE_KINDS)
        marks = ", ".join("?" for _ in kinds)
        rows = await self.db.fetchall(
            f"SELECT {_COLUMNS} FROM dlq WHERE status = 'pending' AND replayable = 1 AND error_kind IN ({marks})"
            " ORDER BY id LIMIT ?", [*kinds, limit])
        return [_row(r) for r in rows]

    async def evicted(self) -> int:
        return await read_counter(self.db, EVICTED_COUNTER)
