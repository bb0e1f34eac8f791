"""core/replay.py: every way a replay ends is a ReplayStatus, and entries go back only to
where they came from (console entries never to Telegram)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import Settings
from core.contracts import ContractViolation, DlqEntry, InboundMessage
from core.pipeline import Pipeline
from core.replay import ReplayStatus, entry_origin, replay_entry, replay_pending, replayable_entries
from core.services import Services, build_services
from tests.core.fakes import RecordingChannel, ScriptedLLM

USER = 100
BROKEN = ContractViolation("llm_response_has_choices", field="choices", producer="llm", detail="none")


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    services: Services
    pipeline: Pipeline
    llm: ScriptedLLM
    channel: RecordingChannel
    traces: int = 0

    def entry(self, text: str, *, chat_type: str = "private", kind: str = "llm_server", outage: bool = True) -> int:
        self.traces += 1
        trace_id = f"{self.traces:032x}"
        chat_id = 0 if chat_type == "console" else USER
        inbound = InboundMessage(update_id=self.traces, trace_id=trace_id, chat_id=chat_id, chat_type=chat_type,
                                 user_id=USER, text=text, received_at=self.services.clock.now())
        return self.run(self.services.dlq.add(DlqEntry(trace_id=trace_id, chat_id=chat_id, user_id=USER, inbound=inbound,
                                              error_kind=kind, error_message="boom", replayable=outage),
                                     attempts=[], now=self.services.clock.iso()))

    def replay(self, dlq_id: int, origin: str = "telegram"):  # noqa: ANN201
        return self.loop.run_until_complete(replay_entry(self.pipeline, self.services, dlq_id, self.channel,
                                                         origin=origin))  # type: ignore[arg-type]

    def run(self, awaitable):  # noqa: ANN001, ANN201 - the stores are async: run them on this rig's loop
        return self.loop.run_until_complete(awaitable)

    def status(self, dlq_id: int) -> str:
        row = self.run(self.services.dlq.get(dlq_id))
        assert row is not None
        return row.status


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    settings = Settings(_env_file=None, data_dir=tmp_path / "data", operator_chat_id=900,
                        allowed_user_ids=str(USER), llm_max_retries=0)
    llm = ScriptedLLM()
    services = loop.run_until_complete(build_services(settings, llm=llm, tracing=False))
    try:
        yield Rig(loop, services, Pipeline(services), llm, RecordingChannel())
    finally:
        loop.run_until_complete(services.close())
        loop.close()


def test_a_replay_answers_once_and_then_says_so(rig: Rig) -> None:
    dlq_id = rig.entry("hello again")
    result = rig.replay(dlq_id)
    assert result.status is ReplayStatus.answered and result.ok and result.ran
    assert result.trace_id and "answer delivered" in result.describe()
    assert any("echo: hello again" in text and "Sorry for the delay" in text for text in rig.channel.texts("final"))
    assert rig.status(dlq_id) == "replayed"
    again = rig.replay(dlq_id)
    assert again.status is ReplayStatus.already_replayed and not again.ran
    assert "is not pending" in again.describe()


def test_a_replay_that_fails_again_stays_pending(rig: Rig) -> None:
    dlq_id = rig.entry("still broken")
    rig.llm.enqueue(BROKEN)
    result = rig.replay(dlq_id)
    assert result.status is ReplayStatus.failed_again and not result.ok and result.ran
    assert rig.status(dlq_id) == "pending" and "stays pending" in result.describe()


def test_entries_that_cannot_run(rig: Rig) -> None:
    assert rig.replay(999).status is ReplayStatus.not_found
    discarded = rig.entry("never mind")
    rig.run(rig.services.dlq.discard(discarded, now=rig.services.clock.iso()))
    assert rig.replay(discarded).status is ReplayStatus.discarded
    claimed = rig.entry("someone else has it")
    rig.run(rig.services.dlq.claim_for_replay(claimed, now=rig.services.clock.iso()))
    assert rig.replay(claimed).status is ReplayStatus.in_progress
    blocked = rig.entry("to a chat that blocked the bot")
    rig.run(rig.services.chats.mark_blocked(USER, "blocked", now=rig.services.clock.iso()))
    result = rig.replay(blocked)
    assert result.status is ReplayStatus.chat_blocked and rig.status(blocked) == "pending"
    assert rig.llm.requests == [] and rig.channel.events == []


def test_console_entries_go_back_to_the_console_only(rig: Rig) -> None:
    console = rig.entry("typed in a terminal", chat_type="console")
    telegram = rig.entry("sent on telegram")
    assert entry_origin(rig.run(rig.services.dlq.get(console))) == "console"  # type: ignore[arg-type]
    refused = rig.replay(console, origin="telegram")
    assert refused.status is ReplayStatus.other_origin and "python -m bot dlq replay" in refused.describe()
    assert rig.replay(telegram, origin="console").status is ReplayStatus.other_origin
    assert rig.llm.requests == [] and rig.status(console) == "pending"
    assert [r.id for r in rig.run(replayable_entries(rig.services, limit=10))] == [telegram]
    assert [r.id for r in rig.run(replayable_entries(rig.services, limit=10, origin="console"))] == [console]
    assert rig.replay(console, origin="console").status is ReplayStatus.answered


def test_replay_pending_takes_one_origin_and_stops_when_the_provider_is_down(rig: Rig) -> None:
    first, second = rig.entry("one"), rig.entry("two")
    rig.entry("from the console", chat_type="console")
    rig.llm.enqueue(BROKEN)
    results = rig.loop.run_until_complete(replay_pending(rig.pipeline, rig.services, rig.channel, outage_only=True,
                                                         provider_up=lambda: False))
    assert [(r.dlq_id, r.status) for r in results] == [(first, ReplayStatus.failed_again)]  # stopped there
    results = rig.loop.run_until_complete(replay_pending(rig.pipeline, rig.services, rig.channel, outage_only=True,
                                                         provider_up=lambda: True))
    # `first` failed on a malformed answer, not an outage: it now waits for the operator.
    assert [(r.dlq_id, r.status) for r in results] == [(second, ReplayStatus.answered)]
    assert rig.status(first) == "pending"
    assert all(event.chat_id == USER for event in rig.channel.events)
