"""The same stores on both engines: SQLite (in memory) and PostgreSQL (a throwaway database).

One PostgreSQL database `gw_t_<pid>_<hex>` is created for the session, migrated by
`migrate_postgres`, emptied before each test and dropped at the end. Without a reachable server
(127.0.0.1:5432, or PG_ADMIN_URL) the suite fails: the PostgreSQL path is not optional.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from config.settings import Settings
from core.access import Access
from core.clock import Clock
from core.context.artifacts import ArtifactCorrupt, ArtifactStore
from core.context.hot_state import HotStateStore, render
from core.context.tokens import counter_for_model
from core.contracts import (
    ContextPlan,
    DlqEntry,
    Escalation,
    HotStateWrite,
    InboundMessage,
    TokenUsage,
    UsageRecord,
)
from core.failures.dlq import DeadLetterQueue
from core.failures.escalation import Escalator, Outbox
from core.failures.storage_errors import is_storage_failure
from core.services import StorageUnavailable, open_services
from core.store import Chats, Database, History, Journal, PostgresDatabase, open_sqlite, read_counter
from core.store.access import AccessRecords
from core.store.interfaces import PairingCode
from core.store.pg_schema import MIGRATIONS, migrate_postgres
from core.usage import UsageLedger, WarningLog, record_prompt_metrics
from tests import pgdb

COUNTER = counter_for_model("gpt-4o-mini")
NOW, LATER = "2026-01-02T03:04:05.000+00:00", "2026-01-02T03:09:05.000+00:00"
TABLES = [statement.split()[2] for _, statements in MIGRATIONS for statement in statements
          if statement.lstrip().startswith("CREATE TABLE")]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this session (the suite needs the server: README)."""
    try:
        url = pgdb.create_database("gw_t")
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at {pgdb.ADMIN_URL}: {error}", pytrace=False)

    async def migrate() -> None:
        db = await PostgresDatabase.connect(url)
        try:
            await migrate_postgres(db)
        finally:
            await db.close()

    asyncio.run(migrate())
    try:
        yield url
    finally:
        pgdb.drop_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, pg_url: str) -> AsyncIterator[Database]:
    engine = open_sqlite(":memory:") if request.param == "sqlite" else await _emptied(pg_url)
    try:
        yield engine
    finally:
        await engine.close()


@pytest.fixture
async def pg_db(pg_url: str) -> AsyncIterator[Database]:
    """For what only PostgreSQL has (several instances on one database)."""
    engine = await _emptied(pg_url)
    try:
        yield engine
    finally:
        await engine.close()


async def _emptied(url: str) -> Database:
    engine = await PostgresDatabase.connect(url, max_size=2)
    await engine.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    return engine


def inbound(n: int, text: str = "hello") -> InboundMessage:
    return InboundMessage(update_id=1000 + n, trace_id=f"{n:032x}", chat_id=10 + n, chat_type="private",
                          user_id=20 + n, text=text, received_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


async def test_journal(db: Database) -> None:
    journal = Journal(db)
    big = 5_000_000_000  # Telegram ids pass 2**31
    assert await journal.accept(update_id=1, chat_id=big, user_id=big, kind="update", raw={"update_id": 1},
                                trace_id=None, now=NOW)
    assert not await journal.accept(update_id=1, chat_id=big, user_id=big, kind="update", raw={}, trace_id=None,
                                    now=LATER)
    await journal.accept(update_id=2, chat_id=5, user_id=5, kind="update", raw={"update_id": 2}, trace_id=None, now=NOW)
    await journal.mark(1, "processing", now=NOW, trace_id="cd" * 16)
    await journal.mark(1, "processing", now=NOW)
    [first, second] = await journal.unfinished()
    assert (first.update_id, first.chat_id, first.attempts, first.trace_id) == (1, big, 2, "cd" * 16)
    assert second.raw == {"update_id": 2} and second.attempts == 0
    await journal.mark(1, "replied", now=NOW, error="late")
    assert await journal.state(1) == "replied" and await journal.state(3) is None
    assert await journal.prune(before=LATER) == 1 and [e.update_id for e in await journal.unfinished()] == [2]


async def test_history(db: Database) -> None:
    history = History(db)
    ids = [await history.append(chat_id=1, role="user" if n % 2 == 0 else "assistant", content=f"m{n}", tokens=10,
                                trace_id=None, update_id=n, now=NOW) for n in range(10)]
    assert ids == sorted(ids) and len(set(ids)) == 10 and all(ids)
    assert [m.content for m in await history.recent(1, max_tokens=35)] == ["m7", "m8", "m9"]
    assert [m.id for m in await history.recent(1, max_tokens=1000, max_messages=-1)] == ids
    assert await history.archive_through(1, ids[3]) == 4 and await history.count_active(1) == 6
    assert [m.id for m in await history.older_than(1, ids[6])] == ids[4:6]
    assert await history.archive_cursor(1) == 0
    await history.advance_archive_cursor(1, ids[5])
    await history.advance_archive_cursor(1, ids[2])  # never moves back
    assert await history.archive_cursor(1) == ids[5]
    last = await history.last_exchange(1)
    assert [m.id for m in last] == ids[8:]
    assert await history.set_aside(1, [m.id for m in last]) == 2 and await history.count_active(1) == 4
    assert await history.set_aside(1, [m.id for m in last], aside=False) == 2
    assert await history.delete(1, [ids[9]]) == 1
    async with db.transaction():
        await history.append(chat_id=1, role="user", content="in a transaction", tokens=1, trace_id=None,
                             update_id=None, now=NOW)
        assert db.in_transaction
    assert (await history.recent(1, max_tokens=1000))[-1].content == "in a transaction"
    assert await history.start_new(1) == 6 and await history.recent(1, max_tokens=1000) == []


async def test_history_on_postgres_reads_another_instance_s_writes_at_once(pg_db: Database) -> None:
    """(SQLite: another connection's commits are tests/core/test_store.py's.)"""
    db = pg_db
    ours, theirs = History(db), History(db)  # two instances of the bot on one database
    await ours.append(chat_id=2, role="user", content="a", tokens=1, trace_id=None, update_id=None, now=NOW)
    assert len(await ours.recent(2, max_tokens=100)) == 1
    await theirs.start_new(2)
    assert await ours.recent(2, max_tokens=100) == []
    assert ours._windows == {}  # PostgreSQL keeps no cache


async def test_dead_letter_queue(db: Database) -> None:
    dlq = DeadLetterQueue(db, max_entries=3)
    first = await dlq.add(DlqEntry(trace_id=inbound(1).trace_id, chat_id=11, user_id=21, inbound=inbound(1),
                                   error_kind="llm_timeout", error_message="slow", replayable=True),
                          attempts=[{"attempt": 1}], now=NOW)
    again = await dlq.add(DlqEntry(trace_id=inbound(1).trace_id, chat_id=11, user_id=21, inbound=inbound(1),
                                   error_kind="llm_server", error_message="500", replayable=True),
                          attempts=[{"attempt": 2}], now=LATER)
    assert first == again and await dlq.depth() == 1
    row = await dlq.get(first)
    assert row is not None and row.inbound == inbound(1) and row.replayable is True
    assert [a["attempt"] for a in row.attempts] == [1, 2] and row.error_kind == "llm_server"
    assert [r.id for r in await dlq.replayable_outage_entries()] == [first]
    claimed = await dlq.claim_for_replay(first, now=LATER)
    assert claimed is not None and await dlq.claim_for_replay(first, now=LATER) is None
    assert await dlq.record_replay_error(first, error_kind="llm_server", error_message="again", replayable=True,
                                         now=LATER)
    assert await dlq.finish_replay(first, ok=False, trace_id="ef" * 16, now=LATER, error="again")
    assert await dlq.counts() == {"pending": 1}
    for n in range(2, 6):
        await dlq.add(DlqEntry(trace_id=inbound(n).trace_id, chat_id=10 + n, user_id=20 + n, inbound=inbound(n),
                               error_kind="internal", error_message="bug", replayable=False), attempts=[], now=NOW)
    assert len(await dlq.list(None)) == 3 and await dlq.evicted() == 2
    newest = (await dlq.list())[0]
    assert await dlq.discard(newest.id, now=LATER) and not await dlq.resolve(newest.id, now=LATER)
    assert await dlq.release_stale_replays(before=LATER) == 0


async def test_outbox_and_escalation(db: Database) -> None:
    outbox = Outbox(db, max_pending=2)
    one = await outbox.enqueue(kind="alert", chat_id=900, text="one", trace_id=None, dedupe_key="k1", now=NOW,
                               reply_markup={"inline_keyboard": []})
    assert one and await outbox.enqueue(kind="alert", chat_id=900, text="dup", trace_id=None, dedupe_key="k1",
                                        now=NOW) is None
    two = await outbox.enqueue(kind="reply", chat_id=5, text="two", trace_id="t", dedupe_key=None, now=NOW)
    three = await outbox.enqueue(kind="reply", chat_id=5, text="three", trace_id="t", dedupe_key=None, now=NOW)
    assert [r.id for r in await outbox.due(now=LATER)] == [two, three]  # the oldest was evicted: outbox full
    assert await read_counter(db, "outbox_evicted") == 1
    await outbox.mark_retry(two or 0, error="later", next_attempt_at="2099-01-01")
    assert await outbox.due(now=LATER) == []  # a chat's later message waits for its earlier one
    await outbox.mark_sent(three or 0, now=LATER)
    await outbox.mark_dead(two or 0, error="gone")
    assert await outbox.depth() == 0 and await outbox.pending_for(5) == []
    assert await outbox.prune(before="2099-01-01") == 3
    alerts = Escalator(db, outbox, operator_chat_id=900, cooldown_s=300, logger=logging.getLogger("test"))
    alert = Escalation(producer="pipeline", key="k", kind="llm_server", severity="error", summary="down", action="")
    moment = datetime(2026, 1, 2, tzinfo=UTC)
    assert await alerts.raise_alert(alert, now=moment) and not await alerts.raise_alert(alert, now=moment)
    [queued] = await outbox.pending_for(900)
    assert "down" in queued.text


async def test_usage_ledger_and_warnings(db: Database) -> None:
    ledger = UsageLedger(db)
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for cost, model in ((0.25, "a"), (None, "b"), (0.5, "a")):
        await ledger.record(UsageRecord(at=moment, trace_id="ab" * 16, chat_id=7, user_id=7, model=model, cost_usd=cost,
                                        usage=TokenUsage(input_tokens=10, output_tokens=5, total_tokens=15), wasted=False))
    assert await ledger.user_day_tokens(7, "2026-01-02") == 45
    assert await ledger.month_cost_usd("2026-01") == pytest.approx(0.75)
    totals = await ledger.user_month(7, "2026-01")
    assert (totals.total_tokens, totals.attempts, totals.unknown_cost_attempts) == (45, 3, 1)
    assert totals.cost_usd == pytest.approx(0.75) and isinstance(totals.cost_usd, float)
    assert [m.model for m in await ledger.by_model(month="2026-01")] == ["a", "b"]
    assert [u.user_id for u in await ledger.top_users("2026-01")] == [7]
    assert await ledger.unknown_models("2026-01") == ["b"]
    assert [d.totals.total_tokens for d in await ledger.user_days(7, ["2026-01-01", "2026-01-02"])] == [0, 45]
    assert (await ledger.daily_spend(["2026-01-02"]))[0].totals.attempts == 3
    assert await ledger.mark_wasted("ab" * 16) == 45 and (await ledger.wasted("2026-01")).attempts == 3
    assert (await ledger.month_totals("2026-02")).attempts == 0 and (await ledger.day_totals("2026-01-02")).attempts == 3
    log = WarningLog(db)
    assert await log.once("k", now=NOW) and not await log.once("k", now=LATER)
    plan = ContextPlan(system_tokens=1, hot_state_tokens=1, hot_state_cap=10, history_tokens=2, history_kept=3,
                       history_dropped=0, current_tokens=1, tools_tokens=0, artifact_count=0, total_tokens=4,
                       budget_tokens=100)
    for _ in range(2):  # the llm stage records it again when an overflow shrank the prompt
        await record_prompt_metrics(db, Chats(db), trace_id="12" * 16, chat_id=7, plan=plan, now=NOW)
    assert await Chats(db).last_prompt(7) == (4, 100)


async def test_access_records(db: Database) -> None:
    records = AccessRecords(db)
    code = PairingCode("ABCD-EFGH", 555, "user", "Eve", None, "pending", NOW, "2099-01-01")
    assert await records.add_code(code) and not await records.add_code(code)
    assert await records.pending_code(555, now=NOW) == code and await records.code("ABCD-EFGH") == code
    assert await records.pending_count(now=NOW) == 1 and await records.codes_since(555, since=NOW) == 1
    await records.decide(subject_id=555, kind="user", status="approved", name="Eve", username=None, decided_by="op",
                         now=LATER)
    assert await records.statuses((555, 556)) == {555: "approved"}
    assert (await records.code("ABCD-EFGH")).status == "approved"  # type: ignore[union-attr]
    assert [d.subject_id for d in await records.decisions("approved")] == [555]
    assert await records.prune(before="2099-01-02") == 1


async def test_access_policy_over_the_engine(db: Database) -> None:
    gate = Access(AccessRecords(db), Outbox(db), Settings(_env_file=None, operator_chat_id=900), Clock())
    answer = await gate.answer_stranger(user_id=555, chat_id=555, chat_type="private", name="Eve")
    assert "pairing code" in answer and not await gate.is_allowed(555)
    await gate.allow("555", by="op")
    assert await gate.is_allowed(555)


async def test_hot_state_and_artifacts(db: Database, tmp_path: Path) -> None:
    artifacts = ArtifactStore(db, tmp_path / "artifacts", counter=COUNTER)

    async def archive(chat_id: int, markdown: str, label: str) -> str:
        return (await artifacts.put(content=markdown.encode(), media_type="text/markdown", chat_id=chat_id,
                                    user_id=None, label=label, summary=label, kind="hot_state_archive", trace_id=None,
                                    now=NOW)).ref

    store = HotStateStore(db, counter=COUNTER, max_tokens=120, archive=archive)
    write = HotStateWrite(producer="pipeline", source="agent", trace_id="cd" * 16, chat_id=3, set_objective="goal",
                          add=tuple(("facts", f"fact number {n} " + "word " * 10) for n in range(12)), remove=())
    saved, notes = await store.apply(3, write, now=NOW)
    assert saved.archive_ref and any("archived" in note for note in notes)
    assert await store.load(3) == saved and await store.tokens(3) == COUNTER.count(render(saved))
    info = await artifacts.resolve(3, saved.archive_ref)
    assert "Hot state archive" in await artifacts.read_text(info)
    assert (await artifacts.latest(3, "hot_state_archive")) == info
    doc = await artifacts.put(content=b"some text", media_type="text/plain", chat_id=3, user_id=3, label="doc",
                              summary="a doc", kind="document", trace_id=None, now=LATER)
    assert doc.created and doc.linked and doc.tokens == COUNTER.count("some text")
    again = await artifacts.put(content=b"some text", media_type="text/plain", chat_id=4, user_id=4, label="doc",
                                summary="a doc", kind="document", trace_id=None, now=LATER)
    assert not again.created and again.linked and await artifacts.read_bytes(again) == b"some text"
    assert await artifacts.find_linked(3, "document", "doc") == replace(doc, created=False, linked=False)
    assert {a.sha256 for a in await artifacts.list(3)} == {doc.sha256, info.sha256}
    on_disk = (tmp_path / "artifacts").exists()
    assert on_disk == (db.dialect == "sqlite")  # PostgreSQL: nothing on the local disk
    if db.dialect == "postgres":
        await db.execute("UPDATE artifact_blobs SET data = ? WHERE sha256 = ?", [b"tampered", doc.sha256])
        with pytest.raises(ArtifactCorrupt):
            await artifacts.read_bytes(doc)


async def test_a_broken_connection_is_a_storage_failure(pg_url: str) -> None:
    with pytest.raises(psycopg.Error) as raised:
        await PostgresDatabase.connect("postgresql://postgres@127.0.0.1:1/none", timeout_s=0.5)
    assert is_storage_failure(raised.value)
    db = await PostgresDatabase.connect(pg_url, max_size=1)
    try:
        with pytest.raises(psycopg.Error) as bug:
            await db.execute("SELECT * FROM no_such_table")
        assert not is_storage_failure(bug.value)  # a bug, not the server
    finally:
        await db.close()


async def test_open_services_on_postgres_migrates_and_names_an_unusable_url_without_its_password(
        pg_url: str, tmp_path: Path) -> None:
    services = await open_services(Settings(_env_file=None, data_dir=tmp_path / "data", database_url=pg_url),
                                   tracing=False)
    try:
        assert services.db.dialect == "postgres" and await read_counter(services.db, "storage_opened") >= 1
        assert not (tmp_path / "data" / "gateway.db").exists()
    finally:
        await services.close()
    secret = "s3cr3t-Pa55word"
    bad = f"postgresql://gateway:{secret}@127.0.0.1:1/none"
    with pytest.raises(StorageUnavailable) as raised:
        await open_services(Settings(_env_file=None, data_dir=tmp_path / "data", database_url=bad), tracing=False)
    message = str(raised.value)
    assert "DATABASE_URL=postgresql://gateway:***@127.0.0.1:1/none" in message
    assert secret not in message and "\n" not in message
