"""Alerts carry their buttons through the outbox: a dead-lettered turn's alert Replay/Discard/Trace,
the circuit's Status, other alerts none; the sender gets them as Telegram's JSON, and a sender
without buttons still works for rows that have none."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from core.contracts import Escalation
from core.failures.escalation import Escalator, Outbox, drain_outbox
from core.store import open_sqlite

OPERATOR = 900
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class ButtonSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict | None]] = []

    async def send_text(self, chat_id: int, text: str, *, markdown: bool = False,
                        reply_markup: dict | None = None) -> None:
        self.sent.append((text, reply_markup))


class PlainSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, chat_id: int, text: str, *, markdown: bool = False) -> None:
        self.sent.append(text)


def alert(key: str, kind: str, **extra: object) -> Escalation:
    return Escalation(producer="pipeline", key=key, kind=kind, severity="error", summary=f"{kind} happened",
                      trace_id="1a2b3c4d" + "0" * 24, **extra)


async def test_dead_letter_and_circuit_alerts_carry_their_buttons() -> None:
    db = open_sqlite(":memory:")
    outbox = Outbox(db)
    escalator = Escalator(db, outbox, operator_chat_id=OPERATOR, cooldown_s=300, logger=logging.getLogger("t"))
    await escalator.raise_alert(alert("dlq:llm_server", "llm_server", dlq_id=12), now=NOW)
    await escalator.raise_alert(alert("circuit:x", "circuit_open"), now=NOW)
    await escalator.raise_alert(alert("expensive_failure", "expensive_failure"), now=NOW)
    sender = ButtonSender()
    assert await drain_outbox(outbox, sender, now=lambda: NOW) == 3
    markups = [markup for _, markup in sender.sent]
    data = [[b["callback_data"] for row in m["inline_keyboard"] for b in row] if m else None for m in markups]
    labels = [[b["text"] for row in m["inline_keyboard"] for b in row] if m else None for m in markups]
    assert data == [["dlq:replay:12", "dlq:discard:12", "trace:1a2b3c4d"], ["status"], None]
    assert labels == [["Replay", "Discard", "Trace"], ["Status"], None]
    assert json.loads((await outbox.get(1)).reply_markup) == markups[0]


async def test_a_sender_without_buttons_still_takes_plain_rows() -> None:
    outbox = Outbox(open_sqlite(":memory:"))
    await outbox.enqueue(kind="alert", chat_id=OPERATOR, text="plain", trace_id=None, dedupe_key="k", now=NOW.isoformat())
    sender = PlainSender()
    assert await drain_outbox(outbox, sender, now=lambda: NOW) == 1 and sender.sent == ["plain"]
