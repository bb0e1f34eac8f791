"""Outbox delivery with retries, and operator alerts deduplicated per key and cooldown."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from core.contracts import Escalation
from core.failures.backoff_schedule import ceiling_wait_s
from core.failures.escalation import DeliveryFailed, Escalator, Outbox, drain_outbox, escalation_for, iso
from core.failures.taxonomy import GatewayError, Kind
from core.store import open_sqlite, read_counter

T0 = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
OPERATOR = 42
TRACE = "ab12cd34" + "0" * 24


class Clock:
    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Sender:
    """Records deliveries; `fail` scripts DeliveryFailed (or any exception) per call."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.fail: list[BaseException | None] = []

    async def send_text(self, chat_id: int, text: str, *, markdown: bool = False) -> None:
        failure = self.fail.pop(0) if self.fail else None
        if failure is not None:
            raise failure
        self.sent.append((chat_id, text))


@pytest.fixture
def outbox() -> Outbox:
    return Outbox(open_sqlite(":memory:"))


async def queue(outbox: Outbox, chat_id: int, text: str, *, key: str | None = None) -> int | None:
    return await outbox.enqueue(kind="reply", chat_id=chat_id, text=text, trace_id=None, dedupe_key=key, now=iso(T0))


async def test_enqueue_dedupes_by_key(outbox: Outbox) -> None:
    assert await queue(outbox, 1, "a", key="k") is not None
    assert await queue(outbox, 1, "again", key="k") is None
    assert await queue(outbox, 1, "no key") is not None and await queue(outbox, 1, "no key") is not None
    assert await outbox.depth() == 3 and [r.text for r in await outbox.pending_for(1)] == ["a", "no key", "no key"]


async def test_outbox_is_bounded() -> None:
    outbox = Outbox(open_sqlite(":memory:"), max_pending=2)
    first = await queue(outbox, 1, "a")
    await queue(outbox, 1, "b")
    await queue(outbox, 1, "c")
    assert await outbox.depth() == 2 and first is not None
    row = await outbox.get(first)
    assert row is not None and row.status == "dead"
    assert await read_counter(outbox.db, "outbox_evicted") == 1


async def test_drain_sends_in_order(outbox: Outbox) -> None:
    for text in ("one", "two"):
        await queue(outbox, 1, text)
    await queue(outbox, 2, "other chat")
    sender, clock = Sender(), Clock()
    assert await drain_outbox(outbox, sender, now=clock) == 3
    assert sender.sent == [(1, "one"), (1, "two"), (2, "other chat")]
    assert await outbox.depth() == 0 and await drain_outbox(outbox, sender, now=clock) == 0


async def test_temporary_failure_holds_the_chat_and_honours_retry_after(outbox: Outbox) -> None:
    first = await queue(outbox, 1, "one")
    await queue(outbox, 1, "two")
    await queue(outbox, 2, "other chat")
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("flood", permanent=False, retry_after_s=30)]
    assert await drain_outbox(outbox, sender, now=clock) == 1
    assert sender.sent == [(2, "other chat")]
    row = await outbox.get(first or 0)
    assert row is not None and (row.attempts, row.last_error) == (1, "flood")
    assert row.next_attempt_at == iso(T0 + timedelta(seconds=30))
    clock.advance(29)
    assert await drain_outbox(outbox, sender, now=clock) == 0  # "two" waits behind "one"
    clock.advance(1)
    assert await drain_outbox(outbox, sender, now=clock) == 2
    assert sender.sent[1:] == [(1, "one"), (1, "two")]


async def test_exponential_backoff_without_retry_after(outbox: Outbox) -> None:
    row_id = await queue(outbox, 1, "one") or 0
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("network", permanent=False), RuntimeError("sender bug")]
    await drain_outbox(outbox, sender, now=clock, base_wait_s=2.0)
    assert (await outbox.get(row_id)).next_attempt_at == iso(T0 + timedelta(seconds=2))  # type: ignore[union-attr]
    clock.advance(2)
    await drain_outbox(outbox, sender, now=clock, base_wait_s=2.0)
    row = await outbox.get(row_id)
    assert row is not None and row.next_attempt_at == iso(clock.at + timedelta(seconds=4))
    assert row.last_error == "RuntimeError: sender bug"


async def test_redelivery_waits_follow_the_shared_schedule(outbox: Outbox) -> None:
    """Without a retry_after, the n-th failure waits core.failures.backoff_schedule's n-th ceiling."""
    row_id = await queue(outbox, 1, "one") or 0
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("network", permanent=False)] * 7
    waits: list[float] = []
    for _ in range(7):
        await drain_outbox(outbox, sender, now=clock, base_wait_s=1.5, max_wait_s=30.0)
        row = await outbox.get(row_id)
        assert row is not None
        waits.append((datetime.fromisoformat(row.next_attempt_at) - clock.at).total_seconds())
        clock.at = datetime.fromisoformat(row.next_attempt_at)
    assert waits == [ceiling_wait_s(attempt=n, base_wait_s=1.5, max_wait_s=30.0) for n in range(1, 8)]
    assert waits == [1.5, 3.0, 6.0, 12.0, 24.0, 30.0, 30.0]


async def test_permanent_failure_and_attempt_limit_are_dead(outbox: Outbox) -> None:
    blocked = await queue(outbox, 1, "to a blocked chat") or 0
    flaky = await queue(outbox, 2, "never gets through") or 0
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("Forbidden: bot was blocked by the user", permanent=True),
                   DeliveryFailed("network", permanent=False), DeliveryFailed("network", permanent=False)]
    await drain_outbox(outbox, sender, now=clock, max_attempts=2)
    assert (await outbox.get(blocked)).status == "dead"  # type: ignore[union-attr]
    clock.advance(3600)
    await drain_outbox(outbox, sender, now=clock, max_attempts=2)
    row = await outbox.get(flaky)
    assert row is not None and (row.status, row.attempts) == ("dead", 2)
    assert await outbox.depth() == 0 and sender.sent == []


async def test_by_default_a_row_is_retried_until_delivered_or_too_old(outbox: Outbox) -> None:
    row_id = await queue(outbox, 1, "outage alert") or 0
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("Bad Gateway", permanent=False)] * 30
    for _ in range(30):  # a long Telegram outage: far more failures than any attempt limit
        await drain_outbox(outbox, sender, now=clock, base_wait_s=1.0, max_wait_s=60.0)
        clock.advance(60)
    row = await outbox.get(row_id)
    assert row is not None and (row.status, row.attempts) == ("pending", 30)
    assert await drain_outbox(outbox, sender, now=clock) == 1 and sender.sent == [(1, "outage alert")]

    stale = await queue(outbox, 2, "queued long ago") or 0
    clock.advance(8 * 24 * 3600)
    sender.fail = [DeliveryFailed("Bad Gateway", permanent=False)]
    await drain_outbox(outbox, sender, now=clock, max_age_s=7 * 24 * 3600)
    assert (await outbox.get(stale)).status == "dead"  # type: ignore[union-attr]


async def test_rows_for_a_chat_that_blocked_the_bot_are_dropped(outbox: Outbox) -> None:
    first = await queue(outbox, 1, "reply one") or 0
    second = await queue(outbox, 1, "reply two") or 0
    other = await queue(outbox, 3, "known blocked") or 0
    gone: dict[int, str] = {}
    sender, clock = Sender(), Clock()
    sender.fail = [DeliveryFailed("forbidden: bot was blocked by the user", permanent=True, chat_gone=True)]

    async def blocked(chat_id: int) -> bool:
        return chat_id in gone or chat_id == 3

    async def record(chat_id: int, reason: str) -> None:
        gone.setdefault(chat_id, reason)

    sent = await drain_outbox(outbox, sender, now=clock, chat_gone=blocked, on_chat_gone=record)
    assert sent == 0 and sender.sent == [] and gone == {1: "forbidden: bot was blocked by the user"}
    assert [(await outbox.get(i)).status for i in (first, second, other)] == ["dead"] * 3  # type: ignore[union-attr]


def alert(**overrides: object) -> Escalation:
    values: dict[str, object] = {"producer": "pipeline", "key": "llm_auth", "kind": "llm_auth",
                                 "severity": "critical", "summary": "The LLM provider rejected the API key.",
                                 "trace_id": TRACE, "chat_id": 7, "user_id": 8}
    values.update(overrides)
    return Escalation(**values)  # type: ignore[arg-type]


def make_escalator(outbox: Outbox, *, operator: int | None = OPERATOR,
                   logger: logging.Logger | None = None) -> Escalator:
    return Escalator(outbox.db, outbox, operator_chat_id=operator, cooldown_s=300,
                     logger=logger or logging.getLogger("test.escalation"))


async def test_first_alert_text(outbox: Outbox) -> None:
    assert await make_escalator(outbox).raise_alert(alert(), now=T0)
    [row] = await outbox.pending_for(OPERATOR)
    assert row.kind == "alert" and row.trace_id == TRACE
    assert row.text.splitlines() == [
        "[CRITICAL] The LLM provider rejected the API key.",
        "kind: llm_auth",
        "chat: 7 user: 8",
        "count: 1 since 10:00 UTC",
        "ref: ab12cd34",
        "action: check LLM_API_KEY, then /replay <id>",
    ]


async def test_cooldown_suppresses_and_reports_the_count(outbox: Outbox) -> None:
    escalator = make_escalator(outbox)
    assert await escalator.raise_alert(alert(), now=T0)
    assert not await escalator.raise_alert(alert(), now=T0 + timedelta(seconds=60))
    assert await escalator.raise_alert(alert(key="other", action="look"), now=T0 + timedelta(seconds=61))
    # a restart: a new Escalator over the same database still remembers the cooldown
    escalator = make_escalator(outbox)
    assert not await escalator.raise_alert(alert(), now=T0 + timedelta(seconds=299))
    assert await escalator.raise_alert(alert(), now=T0 + timedelta(seconds=300))
    texts = [r.text for r in await outbox.pending_for(OPERATOR)]
    assert len(texts) == 3
    assert "count: 4 since 10:00 UTC" in texts[2]
    assert texts[2].endswith("(2 similar alerts suppressed since 10:00 UTC)")
    # the window starts again: nothing suppressed since 10:05
    assert await escalator.raise_alert(alert(), now=T0 + timedelta(seconds=900))
    last = (await outbox.pending_for(OPERATOR))[-1].text
    assert "count: 1 since 10:15 UTC" in last and "suppressed" not in last


async def test_without_operator_chat_logs_at_error(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    escalator = make_escalator(outbox, operator=None)
    with caplog.at_level(logging.ERROR, logger="test.escalation"):
        assert await escalator.raise_alert(alert(chat_id=None, user_id=None, trace_id=None), now=T0)
        assert not await escalator.raise_alert(alert(), now=T0 + timedelta(seconds=1))
    assert await outbox.depth() == 0
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage().startswith("[CRITICAL] The LLM provider rejected the API key.\nkind: llm_auth\ncount:")


def test_escalation_for_a_gateway_error() -> None:
    error = GatewayError(Kind.llm_quota, "HTTP 429: quota")
    escalation = escalation_for(error, key="llm_quota", trace_id=TRACE, chat_id=1, user_id=2, dlq_id=5)
    assert (escalation.severity, escalation.kind) == ("critical", "llm_quota")
    assert escalation.action == "add credit at the provider, then /replay 5"
    assert escalation.summary == "llm_quota: HTTP 429: quota"


def test_repeated_failure_three_in_ten_minutes(outbox: Outbox) -> None:
    escalator = make_escalator(outbox)
    assert not escalator.repeated_failure(chat_id=1, now_s=0)
    assert not escalator.repeated_failure(chat_id=1, now_s=100)
    assert not escalator.repeated_failure(chat_id=2, now_s=150)
    assert escalator.repeated_failure(chat_id=1, now_s=600)
    assert not escalator.repeated_failure(chat_id=3, now_s=0)
    assert not escalator.repeated_failure(chat_id=3, now_s=400)
    assert not escalator.repeated_failure(chat_id=3, now_s=700)  # the first fell out of the window


def test_repeated_failure_memory_is_bounded(outbox: Outbox) -> None:
    escalator = Escalator(outbox.db, outbox, operator_chat_id=None, cooldown_s=0,
                          logger=logging.getLogger("t"), max_tracked_chats=10)
    for chat_id in range(100):
        escalator.repeated_failure(chat_id=chat_id, now_s=0)
    assert len(escalator._chat_failures) == 10
