"""/stop and /retry through the real entry point (`process_raw`): /stop reaches a turn that holds
its chat's lock, /retry puts the old exchange back when the new turn does not answer."""

from __future__ import annotations

import asyncio

from core.failures.taxonomy import GatewayError, Kind
from tests.bot.conftest import ALLOWED, Harness
from tests.core.test_control import SlowLLM


def ask(harness: Harness, text: str, update_id: int) -> str:
    update = harness.fake.text_update(ALLOWED, ALLOWED, text, update_id=update_id)
    return harness.loop.run_until_complete(harness.runtime.process_raw(update))


def active_history(harness: Harness) -> list[tuple[str, str]]:
    rows = harness.services.db.conn.execute("SELECT role, content FROM messages WHERE chat_id = ? AND archived = 0"
                                       " ORDER BY id", [ALLOWED]).fetchall()
    return [(role, content) for role, content in rows]


def test_stop_reaches_the_running_turn_of_its_chat(harness: Harness) -> None:
    services, runtime, fake = harness.services, harness.runtime, harness.fake
    slow = services.llm = SlowLLM([f"w{n} " for n in range(10_000)], pace_s=0.005)

    async def scenario() -> tuple[str, str]:
        turn = asyncio.create_task(runtime.process_raw(fake.text_update(ALLOWED, ALLOWED, "go on", update_id=1)))
        async with asyncio.timeout(5):
            while slow.sent < 3:  # noqa: ASYNC110 - polls the fake LLM
                await asyncio.sleep(0.005)
        # The turn holds the chat's lock: /stop must not wait for it (the turn would never end).
        stop = await asyncio.wait_for(runtime.process_raw(fake.text_update(ALLOWED, ALLOWED, "/stop",
                                                                           update_id=2)), 5)
        return stop, await asyncio.wait_for(turn, 5)

    assert harness.loop.run_until_complete(scenario()) == ("replied", "stopped")
    assert slow.cancelled and slow.sent < 10_000
    assert harness.journal(1) == ("replied", None) and harness.dlq_count(1) == 0
    texts = fake.sent_texts(ALLOWED)
    assert "Stopping the answer." in texts and any(t.startswith("w0 w1 w2") and t.endswith("(stopped)")
                                                   for t in texts)
    assert ask(harness, "/stop", 3) == "replied"
    assert "Nothing to stop" in fake.sent_texts(ALLOWED)[-1]


def test_retry_that_does_not_answer_puts_the_old_exchange_back(harness: Harness) -> None:
    harness.llm.enqueue("first answer")
    assert ask(harness, "a question", 1) == "replied"
    before = active_history(harness)
    assert before == [("user", "a question"), ("assistant", "first answer")]
    down = GatewayError(Kind.llm_server, "down")
    harness.llm.enqueue(down, down)  # the attempt and its one retry
    assert ask(harness, "/retry", 2) == "replied"
    assert "ref:" in harness.fake.sent_texts(ALLOWED)[-1]  # the failed turn says so, as any turn does
    assert active_history(harness) == before
    [entry] = harness.loop.run_until_complete(harness.services.dlq.list("pending"))
    assert entry.inbound.text == "a question"

    harness.llm.enqueue("second answer")
    assert ask(harness, "/retry", 3) == "replied"
    assert active_history(harness) == [("user", "a question"), ("assistant", "second answer")]
    assert [m.content for m in harness.llm.requests[-1].messages if m.role != "system"] == ["a question"]


def test_retry_while_an_answer_is_written_is_refused(harness: Harness) -> None:
    harness.llm.enqueue("an answer")
    assert ask(harness, "a question", 1) == "replied"
    with harness.services.running.running(ALLOWED, asyncio.Event()):
        assert ask(harness, "/retry", 2) == "replied"
    assert "still being written" in harness.fake.sent_texts(ALLOWED)[-1]
    assert len(harness.llm.requests) == 1
