"""Several instances on one PostgreSQL database: two coordinators (two pools, like two processes) on
a fresh database per test. Claims won once, expiry takeover, chat exclusion and order, leader
failover when the leader's connection closes, the second poller refused; SQLite's trivial answers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from bot.instances import POLLER_REFUSED, Instances, PollerRefused, claim_poller, coordination_for
from core.chat_turns import ChatTurns
from core.contracts import Escalation
from core.failures.escalation import Escalator, Outbox
from core.store.engine import PostgresDatabase
from core.store.leases import LEADER_LOCK, LocalCoordination, PostgresCoordination, PostgresSessionLock
from core.store.pg_schema import migrate_postgres
from tests.pgdb import ADMIN_URL, create_database, drop_database

LEASE_S = 1.0


@dataclass
class Instance:
    db: PostgresDatabase
    coordination: PostgresCoordination
    turns: ChatTurns


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, Callable[..., Awaitable[Instance]]]]:
    """The URL of a fresh migrated database and `make(lease_s=...)` -> an instance on it."""
    url = create_database("gw_leases")
    made: list[PostgresDatabase] = []

    async def make(*, lease_s: float = LEASE_S, name: str | None = None, order_wait_s: float = 60.0) -> Instance:
        db = await PostgresDatabase.connect(url, max_size=4)
        made.append(db)
        coordination = PostgresCoordination(db, lease_s=lease_s, instance_id=name)
        return Instance(db, coordination, ChatTurns(coordination, order_wait_s=order_wait_s))

    try:
        first = await PostgresDatabase.connect(url, max_size=1)
        await migrate_postgres(first)
        await first.close()
        yield url, make
    finally:
        for db in made:
            await db.close()
        drop_database(url)


async def journal(db: PostgresDatabase, update_id: int, chat_id: int = 7, *, claim: PostgresCoordination | None = None,
                  state: str = "received") -> bool:
    """What intake does: the journal row and, if the INSERT won, its claim, in one transaction."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    async with db.transaction():
        won = await db.execute(
            "INSERT INTO journal(update_id, chat_id, user_id, kind, state, raw, received_at, updated_at)"
            " VALUES (?, ?, 1, 'update', ?, ?, ?, ?) ON CONFLICT (update_id) DO NOTHING",
            [update_id, chat_id, state, json.dumps({"update_id": update_id}), now, now]) == 1
        if won and claim is not None:
            await claim.claim_update(update_id)
    return won


async def finish(db: PostgresDatabase, update_id: int) -> None:
    await db.execute("UPDATE journal SET state = 'replied' WHERE update_id = ?", [update_id])


async def owner(db: PostgresDatabase, update_id: int) -> str | None:
    row = await db.fetchone("SELECT owner FROM update_claims WHERE update_id = ?", [update_id])
    return row[0] if row else None


async def until(condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110 - polling the database, not an event
            await asyncio.sleep(0.02)


async def test_an_update_delivered_to_both_is_owned_by_the_insert_that_won(pg) -> None:
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    results = await asyncio.gather(*(journal(x.db, u, claim=x.coordination) for u in range(1, 41) for x in (a, b)))
    assert sum(results) == 40  # each update_id won exactly once
    owners = {u: await owner(a.db, u) for u in range(1, 41)}
    won_by = {u: "a" if results[2 * (u - 1)] else "b" for u in range(1, 41)}
    assert owners == won_by


async def test_expired_claims_are_taken_over_once_and_live_ones_never(pg) -> None:
    _, make = pg
    dead, a, b = await make(name="dead", lease_s=0.3), await make(name="a"), await make(name="b")
    for update_id in range(1, 31):
        await journal(dead.db, update_id, chat_id=update_id % 3, claim=dead.coordination)
    await journal(dead.db, 99, claim=dead.coordination)
    await finish(dead.db, 99)  # finished: never taken over
    await journal(a.db, 100, claim=a.coordination)  # a's own, renewed: never taken
    assert await b.coordination.take_over() == []  # nothing has expired yet

    async def all_expired() -> bool:
        row = await a.db.fetchone("SELECT COUNT(*) FROM update_claims WHERE owner = 'dead'"
                                  " AND lease_until < clock_timestamp()")
        return row[0] == 31

    await until(all_expired)
    await a.coordination.renew()
    taken_a, taken_b = await asyncio.gather(a.coordination.take_over(limit=100), b.coordination.take_over(limit=100))
    ids_a, ids_b = {e.update_id for e in taken_a}, {e.update_id for e in taken_b}
    assert not ids_a & ids_b and ids_a | ids_b == set(range(1, 31))
    assert all(e.raw == {"update_id": e.update_id} and e.state == "received" for e in taken_a + taken_b)
    assert await owner(a.db, 100) == "a" and await owner(a.db, 5) in ("a", "b")
    assert await b.coordination.take_over() == [] and await a.coordination.take_over() == []


async def test_a_row_without_a_claim_is_taken_only_once_older_than_a_lease(pg) -> None:
    _, make = pg
    a = await make(name="a", lease_s=0.3)
    await journal(a.db, 1)  # no claim: journaled by a version without claims, or copied
    assert await a.coordination.take_over() == []  # could be an instance between INSERT and claim

    async def taken() -> bool:
        return [e.update_id for e in await a.coordination.take_over()] == [1]

    await until(taken)
    assert await owner(a.db, 1) == "a"


async def test_renewal_keeps_a_claim_and_release_all_hands_it_over_at_once(pg) -> None:
    _, make = pg
    a, b = await make(name="a", lease_s=0.5), await make(name="b")
    await journal(a.db, 1, claim=a.coordination)
    await journal(a.db, 2, claim=a.coordination)
    instances = Instances(a.coordination, lease_s=0.5)
    stop = asyncio.Event()
    beating = asyncio.create_task(instances.run(stop))
    try:
        for _ in range(8):  # over two leases of heartbeats: still a's
            await asyncio.sleep(0.15)
            assert await b.coordination.take_over() == []
    finally:
        stop.set()
        await beating
    await instances.close(keep={2})  # a clean stop: 1 goes now, 2 (still running) later
    assert [e.update_id for e in await b.coordination.take_over()] == [1]
    assert await owner(a.db, 2) == "a"


async def test_a_forgotten_claim_is_not_renewed_and_runs_again_elsewhere(pg) -> None:
    """Storage refused a write mid-turn: the instance forgets the update, a sweeper resumes it."""
    _, make = pg
    a, b = await make(name="a", lease_s=0.3), await make(name="b")
    await journal(a.db, 1, claim=a.coordination)
    await journal(a.db, 2, claim=a.coordination)
    a.coordination.forget(1)
    await a.coordination.release_update(3)  # never held (a duplicate): no statement, no error

    async def only_1_taken() -> bool:
        await a.coordination.renew()
        return [e.update_id for e in await b.coordination.take_over()] == [1]

    await until(only_1_taken)
    assert await owner(a.db, 2) == "a"


async def test_journaled_claims_in_the_insert_transaction_and_finished_drops_it(pg) -> None:
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    ia, ib = Instances(a.coordination, lease_s=1.0, db=a.db), Instances(b.coordination, lease_s=1.0, db=b.db)

    async def accept(x: Instance, update_id: int) -> bool:
        return await journal(x.db, update_id)

    assert await ia.journaled(1, lambda: accept(a, 1))
    assert not await ib.journaled(1, lambda: accept(b, 1))  # the other instance: a duplicate, no claim
    assert await owner(a.db, 1) == "a" and 1 not in b.coordination.updates

    async def fails_after_insert() -> bool:
        await journal(b.db, 2)
        raise RuntimeError("crash between the journal row and its claim")

    with pytest.raises(RuntimeError):
        await ib.journaled(2, fails_after_insert)
    assert await a.db.fetchall("SELECT update_id FROM journal ORDER BY update_id") == [(1,)]  # rolled back
    await finish(a.db, 1)
    await ia.finished(1)
    assert await owner(a.db, 1) is None
    await journal(a.db, 3, claim=a.coordination)
    await ia.finished(3, deferred=True)  # storage refused a write: a's heartbeat no longer renews it
    assert 3 not in a.coordination.updates and await owner(a.db, 3) == "a"


async def test_the_sweeper_hands_taken_updates_to_resume(pg) -> None:
    _, make = pg
    dead, b = await make(name="dead", lease_s=0.3), await make(name="b")
    await journal(dead.db, 5, claim=dead.coordination)
    resumed: list[int] = []

    async def resume(entries: list) -> None:
        resumed.extend(e.update_id for e in entries)

    instances = Instances(b.coordination, lease_s=1.0, resume=resume, sweep_every_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(instances.run(stop))

    async def swept() -> bool:
        return resumed == [5]

    try:
        await until(swept)
    finally:
        stop.set()
        await task
    assert await owner(b.db, 5) == "b"


async def test_chat_lease_excludes_other_instances_until_released_or_expired(pg) -> None:
    _, make = pg
    a, b = await make(name="a", lease_s=0.3), await make(name="b")
    assert await a.coordination.try_chat(7)
    assert not await b.coordination.try_chat(7)
    assert await a.coordination.try_chat(7)  # already mine
    assert await b.coordination.try_chat(8)  # another chat
    await a.coordination.release_chat(7)
    assert await b.coordination.try_chat(7)
    await b.coordination.release_chat(7)
    assert await a.coordination.try_chat(7)  # a "dies" holding it: b gets it once the lease ran out

    async def b_gets_it() -> bool:
        return await b.coordination.try_chat(7)

    await until(b_gets_it)


async def test_turns_of_one_chat_never_overlap_across_instances(pg) -> None:
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    running: set[str] = set()
    overlaps: list[set[str]] = []
    log: list[str] = []

    async def turn(instance: Instance, label: str) -> None:
        async with instance.turns.hold(7):  # replay-like: exclusion only
            running.add(label)
            if len(running) > 1:
                overlaps.append(set(running))
            for _ in range(3):
                await asyncio.sleep(0)
                await instance.db.fetchone("SELECT 1")  # a real await on the database mid-turn
            log.append(label)
            running.discard(label)

    await asyncio.gather(*(turn(a if i % 2 else b, f"t{i}") for i in range(12)))
    assert overlaps == [] and len(log) == 12
    row = await a.db.fetchone("SELECT COUNT(*) FROM chat_leases")
    assert row[0] == 0  # every lease given back


async def test_a_later_update_waits_for_an_earlier_one_owned_elsewhere(pg) -> None:
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    await journal(a.db, 1, claim=a.coordination)
    await journal(b.db, 2, claim=b.coordination)
    order: list[int] = []

    async def run(instance: Instance, update_id: int) -> None:
        async with instance.turns.hold(7, update_id=update_id):
            order.append(update_id)
        await finish(instance.db, update_id)  # the router marks the row after the turn

    later = asyncio.create_task(run(b, 2))  # update 2 comes first, on b: it must wait for 1

    async def waiting() -> bool:  # b has tried at least once and given the lease back
        row = await a.db.fetchone("SELECT COUNT(*) FROM chat_leases")
        return row[0] == 0 and not order

    await until(waiting)
    await run(a, 1)
    await later
    assert order == [1, 2]


async def test_an_earlier_update_of_a_dead_instance_is_taken_over_then_runs_first(pg) -> None:
    _, make = pg
    dead, b = await make(name="dead", lease_s=0.3), await make(name="b")
    await journal(dead.db, 1, claim=dead.coordination)
    await dead.coordination.try_chat(7)  # died mid-turn; its chat lease ran out before its claim did:
    await dead.db.execute("UPDATE chat_leases SET lease_until = clock_timestamp()")  # 2 could run at once
    await journal(b.db, 2, claim=b.coordination)
    order: list[int] = []
    pending: list[asyncio.Task] = []

    async def run(update_id: int) -> None:
        async with b.turns.hold(7, update_id=update_id):
            order.append(update_id)
        await finish(b.db, update_id)

    later = asyncio.create_task(run(2))

    async def resume(entries: list) -> None:
        pending.extend(asyncio.create_task(run(e.update_id)) for e in entries)

    instances = Instances(b.coordination, lease_s=1.0, sweep_every_s=0.05, resume=resume)
    stop = asyncio.Event()
    loops = asyncio.create_task(instances.run(stop))
    try:
        async with asyncio.timeout(10):
            await later
    finally:
        stop.set()
        await loops
    await asyncio.gather(*pending)
    assert order == [1, 2]


async def test_out_of_order_arrival_across_two_instances_cannot_deadlock(pg) -> None:
    """1 and 3 on a, 2 on b; 3 reaches a's lock before 1 does: all three run, in update order."""
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    for update_id, x in ((1, a), (2, b), (3, a)):
        await journal(x.db, update_id, claim=x.coordination)
    order: list[int] = []

    async def run(instance: Instance, update_id: int) -> None:
        async with instance.turns.hold(7, update_id=update_id):
            order.append(update_id)
            await asyncio.sleep(0.01)
        await finish(instance.db, update_id)

    async with asyncio.timeout(15):
        await asyncio.gather(run(a, 3), run(b, 2), run(a, 1))
    assert order == [1, 2, 3]


async def test_a_stuck_earlier_update_delays_a_turn_only_for_order_wait(pg) -> None:
    _, make = pg
    a = await make(name="a", order_wait_s=0.3)
    await journal(a.db, 1, claim=a.coordination)  # never finishes
    await journal(a.db, 2, claim=a.coordination)
    async with asyncio.timeout(10), a.turns.hold(7, update_id=2):
        pass


async def test_leader_fails_over_when_its_connection_closes(pg) -> None:
    url, _ = pg
    first, second = PostgresSessionLock(url, LEADER_LOCK, name="leader"), PostgresSessionLock(url, LEADER_LOCK, name="leader")
    try:
        assert await first.try_acquire()
        assert await first.try_acquire()  # still held
        assert not await second.try_acquire()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:  # the leader's process dies
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name = 'telegram-llm-gateway leader' AND pid IN"
                          " (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)")

        async def second_leads() -> bool:
            return await second.try_acquire()

        await until(second_leads)
        assert not await first.try_acquire()  # it notices it lost the lock, and cannot take it back
        assert not first.held
    finally:
        await first.release()
        await second.release()


async def test_a_second_poller_on_the_same_database_is_refused(pg) -> None:
    url, _ = pg
    poller = await claim_poller(url)
    try:
        with pytest.raises(PollerRefused) as refused:
            await claim_poller(url)
        assert str(refused.value) == POLLER_REFUSED and "WEBHOOK_URL" in POLLER_REFUSED
    finally:
        await poller.release()
    again = await claim_poller(url)  # the first one stopped: polling may start again
    await again.release()
    closed_port = url.replace(":5432/", ":1/")
    with pytest.raises(PollerRefused, match="could not take the poller's lock"):  # not "another instance"
        await claim_poller(closed_port)


async def test_on_sqlite_every_answer_is_trivial() -> None:
    class SQLiteLike:
        dialect = "sqlite"

    coordination = coordination_for(SQLiteLike(), lease_s=30)
    assert isinstance(coordination, LocalCoordination) and not coordination.shared
    assert await coordination.try_chat(1) and await coordination.take_over() == []
    assert await coordination.earlier_unfinished(1, 5) is None
    instances = Instances.build(SQLiteLike(), lease_s=30, database_url=None)
    assert await instances.leads()
    await instances.run(asyncio.Event())  # returns at once: nothing to beat or sweep
    await claim_poller(None)
    turns = ChatTurns()
    async with turns.hold(1, update_id=3):
        pass


async def test_alert_deduplication_is_shared_by_instances(pg) -> None:
    """Both instances read "cooled down" at once: the conditional upsert lets one alert out."""
    _, make = pg
    a, b = await make(name="a"), await make(name="b")
    escalators = [Escalator(x.db, Outbox(x.db), operator_chat_id=900, cooldown_s=300, logger=logging.getLogger("t"))
                  for x in (a, b)]
    alert = Escalation(producer="pipeline", key="llm_down", kind="provider_down", severity="error", summary="down")
    now = datetime.now(UTC)
    for round_ in range(5):  # five races, each key fresh
        keyed = alert.model_copy(update={"key": f"llm_down:{round_}"})
        sent = await asyncio.gather(*(e.raise_alert(keyed, now=now + timedelta(milliseconds=i))  # two clocks
                                      for i, e in enumerate(escalators * 3)))
        assert sum(sent) == 1
    row = await a.db.fetchone("SELECT COUNT(*) FROM outbox")
    assert row[0] == 5
    later = now + timedelta(seconds=301)  # after the cooldown: one more, and the suppressed ones counted
    sent = await asyncio.gather(*(e.raise_alert(alert.model_copy(update={"key": "llm_down:0"}), now=later)
                                  for e in escalators))
    assert sorted(sent) == [False, True]
    texts = await a.db.fetchall("SELECT text FROM outbox ORDER BY id")
    assert "(5 similar alerts suppressed since" in texts[-1][0]
