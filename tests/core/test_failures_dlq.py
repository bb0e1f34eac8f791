"""The dead-letter queue over a real SQLite database (in memory, and a file for restarts)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.contracts import Attachment, DlqEntry, InboundMessage
from core.failures.dlq import DeadLetterQueue
from core.failures.taxonomy import Kind
from core.store import open_sqlite, read_counter

NOW = "2025-01-02T03:04:05.000+00:00"
LATER = "2025-01-02T03:09:05.000+00:00"


def trace(n: int) -> str:
    return f"{n:032x}"


def entry(n: int, *, kind: Kind = Kind.llm_timeout, replayable: bool = True, text: str = "hello") -> DlqEntry:
    inbound = InboundMessage(update_id=1000 + n, trace_id=trace(n), chat_id=10 + n, chat_type="private",
                             user_id=20 + n, text=text, received_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
                             attachment=Attachment(file_id="f1", file_name="a.pdf") if n % 2 else None)
    return DlqEntry(trace_id=trace(n), chat_id=inbound.chat_id, user_id=inbound.user_id, inbound=inbound,
                    error_kind=str(kind), error_message=f"{kind}: scripted", replayable=replayable)


def attempts(kind: Kind = Kind.llm_timeout) -> list[dict[str, object]]:
    return [{"attempt": 1, "kind": str(kind), "detail": "scripted", "at_s": 1.0}]


@pytest.fixture
def dlq() -> DeadLetterQueue:
    return DeadLetterQueue(open_sqlite(":memory:"), max_entries=5)


async def test_add_and_read_back(dlq: DeadLetterQueue) -> None:
    original = entry(1)
    entry_id = await dlq.add(original, attempts=attempts(), now=NOW)
    row = await dlq.get(entry_id)
    assert row is not None
    assert row.inbound == original.inbound
    assert (row.trace_id, row.chat_id, row.user_id, row.update_id) == (trace(1), 11, 21, 1001)
    assert (row.status, row.replayable, row.error_kind) == ("pending", True, "llm_timeout")
    assert row.attempts == [{"at": NOW, **attempts()[0]}] and row.first_failed_at == row.last_failed_at == NOW
    assert row.ref == trace(1)[:8]
    assert await dlq.depth() == 1 and await dlq.get(999) is None


async def test_same_trace_updates_instead_of_adding(dlq: DeadLetterQueue) -> None:
    first = await dlq.add(entry(1), attempts=attempts(), now=NOW)
    second = await dlq.add(entry(1, kind=Kind.llm_server), attempts=attempts(Kind.llm_server), now=LATER)
    assert first == second and await dlq.depth() == 1
    row = await dlq.get(first)
    assert row is not None
    assert (row.first_failed_at, row.last_failed_at, row.error_kind) == (NOW, LATER, "llm_server")
    assert [a["kind"] for a in row.attempts] == ["llm_timeout", "llm_server"]


async def test_list_filters_and_orders(dlq: DeadLetterQueue) -> None:
    ids = [await dlq.add(entry(n), attempts=attempts(), now=NOW) for n in range(3)]
    assert await dlq.discard(ids[0], now=LATER)
    assert [r.id for r in await dlq.list()] == [ids[2], ids[1]]
    assert [r.id for r in await dlq.list("discarded")] == [ids[0]]
    assert [r.id for r in await dlq.list(None, limit=2)] == [ids[2], ids[1]]
    assert await dlq.counts() == {"pending": 2, "discarded": 1}


async def test_eviction_prefers_finished_then_oldest_pending(dlq: DeadLetterQueue) -> None:
    ids = [await dlq.add(entry(n), attempts=attempts(), now=NOW) for n in range(5)]
    assert await dlq.resolve(ids[3], now=LATER)
    newest = await dlq.add(entry(5), attempts=attempts(), now=LATER)
    assert await dlq.get(ids[3]) is None and await dlq.get(ids[0]) is not None
    assert await dlq.evicted() == 1
    await dlq.add(entry(6), attempts=attempts(), now=LATER)
    assert await dlq.get(ids[0]) is None and await dlq.get(newest) is not None
    assert await dlq.evicted() == 2 == await read_counter(dlq.db, "dlq_evicted")
    assert len(await dlq.list(None, limit=100)) == 5


async def test_claim_is_idempotent(dlq: DeadLetterQueue) -> None:
    entry_id = await dlq.add(entry(1), attempts=attempts(), now=NOW)
    claimed = await dlq.claim_for_replay(entry_id, now=LATER)
    assert claimed is not None and claimed.status == "replaying"
    assert await dlq.claim_for_replay(entry_id, now=LATER) is None
    assert not await dlq.discard(entry_id, now=LATER)
    assert await dlq.finish_replay(entry_id, ok=True, trace_id=trace(99), now=LATER)
    row = await dlq.get(entry_id)
    assert row is not None and (row.status, row.replay_trace_id) == ("replayed", trace(99))
    assert await dlq.claim_for_replay(entry_id, now=LATER) is None
    assert not await dlq.finish_replay(entry_id, ok=True, trace_id=trace(98), now=LATER)


async def test_failed_replay_goes_back_to_pending(dlq: DeadLetterQueue) -> None:
    entry_id = await dlq.add(entry(1), attempts=attempts(), now=NOW)
    assert await dlq.claim_for_replay(entry_id, now=LATER)
    assert await dlq.finish_replay(entry_id, ok=False, trace_id=trace(7), now=LATER, error="llm_timeout again")
    row = await dlq.get(entry_id)
    assert row is not None and row.status == "pending" and row.last_failed_at == LATER
    assert row.attempts[-1] == {"replay": True, "trace_id": trace(7), "at": LATER, "error": "llm_timeout again"}
    assert await dlq.claim_for_replay(entry_id, now=LATER) is not None


async def test_stale_replays_are_released(dlq: DeadLetterQueue) -> None:
    entry_id = await dlq.add(entry(1), attempts=attempts(), now=NOW)
    await dlq.claim_for_replay(entry_id, now=NOW)
    assert await dlq.release_stale_replays(before=LATER) == 1
    assert await dlq.depth() == 1


async def test_replayable_outage_entries(dlq: DeadLetterQueue) -> None:
    outage = await dlq.add(entry(1, kind=Kind.llm_server), attempts=attempts(), now=NOW)
    await dlq.add(entry(2, kind=Kind.llm_auth), attempts=attempts(), now=NOW)
    await dlq.add(entry(3, kind=Kind.llm_timeout, replayable=False), attempts=attempts(), now=NOW)
    later_outage = await dlq.add(entry(4, kind=Kind.circuit_open), attempts=attempts(), now=NOW)
    assert [r.id for r in await dlq.replayable_outage_entries(10)] == [outage, later_outage]
    assert [r.id for r in await dlq.replayable_outage_entries(1)] == [outage]


async def test_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    db = open_sqlite(path)
    entry_id = await DeadLetterQueue(db).add(entry(1), attempts=attempts(), now=NOW)
    db.conn.close()
    reopened = DeadLetterQueue(open_sqlite(path))
    row = await reopened.get(entry_id)
    assert row is not None and row.inbound == entry(1).inbound and await reopened.depth() == 1
    assert await reopened.claim_for_replay(entry_id, now=LATER) is not None


async def test_a_failed_replay_records_its_own_kind(dlq: DeadLetterQueue) -> None:
    entry_id = await dlq.add(entry(1), attempts=attempts(), now=NOW)
    assert not await dlq.record_replay_error(entry_id, error_kind="llm_auth", error_message="HTTP 401",
                                       replayable=False, now=LATER)  # only a claimed entry
    assert await dlq.claim_for_replay(entry_id, now=LATER) is not None
    assert await dlq.record_replay_error(entry_id, error_kind="llm_auth", error_message="HTTP 401", replayable=False,
                                   now=LATER)
    await dlq.finish_replay(entry_id, ok=False, trace_id=trace(9), now=LATER, error="failed")
    row = await dlq.get(entry_id)
    assert row is not None and (row.status, row.error_kind, row.replayable) == ("pending", "llm_auth", False)
    assert await dlq.replayable_outage_entries(limit=10) == []
