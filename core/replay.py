"""Replaying dead letters: run a DLQ entry again through the whole pipeline, as a new turn.

One implementation for every caller: the operator's `/replay`, `python -m bot dlq replay` and
the bot's automatic replay after an outage. Each replay ends in a `ReplayResult` whose `status`
callers branch on; `describe()` is the sentence shown to the operator.

Entries belong to where their turn came from (`entry_origin`): a turn typed in the console is
replayed to the console (the CLI prints it), never to Telegram, where chat 0 means nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

from core.contracts import InboundMessage
from core.failures.dlq import DlqRow
from core.ports import Channel
from core.services import Services
from core.tracing import current_trace_id, new_turn_span, short_ref

Origin = Literal["telegram", "console"]
BATCH_LIMIT = 100
REPLAY_PACE_S = 1.0  # between the replays of a batch: a provider just back is not hit by a burst


class TurnRunner(Protocol):
    """What replay needs of the pipeline (core.pipeline.Pipeline satisfies it)."""

    async def run_turn(self, inbound: InboundMessage, channel: Channel, *, late_of: str | None = None,
                       replay_dlq_id: int | None = None) -> str: ...


class ReplayStatus(StrEnum):
    answered = "answered"  # replayed: the answer was delivered
    failed_again = "failed_again"  # ran and failed again: the entry stays pending
    not_found = "not_found"
    already_replayed = "already_replayed"
    in_progress = "in_progress"  # another replayer holds it right now
    discarded = "discarded"  # discarded by the operator, or resolved some other way
    chat_blocked = "chat_blocked"  # stays pending until the chat writes again
    other_origin = "other_origin"  # a console entry asked from Telegram (or the reverse)


@dataclass(frozen=True)
class ReplayResult:
    dlq_id: int
    status: ReplayStatus
    trace_id: str | None = None  # the replay's own trace, when it ran
    outcome: str | None = None  # the replayed turn's outcome, when it ran
    chat_id: int | None = None
    origin: Origin = "telegram"

    @property
    def ok(self) -> bool:
        return self.status is ReplayStatus.answered

    @property
    def ran(self) -> bool:
        return self.status in (ReplayStatus.answered, ReplayStatus.failed_again)

    def describe(self) -> str:
        """One line for the operator (a Telegram reply or the CLI's output)."""
        n, ref = self.dlq_id, short_ref(self.trace_id or "0" * 32)
        texts = {
            ReplayStatus.answered: f"#{n} replayed: answer delivered (ref: {ref}).",
            ReplayStatus.failed_again: f"#{n} failed again ({self.outcome}, ref: {ref}); it stays pending.",
            ReplayStatus.not_found: f"No DLQ entry {n}.",
            ReplayStatus.already_replayed: f"#{n} is not pending (replayed).",
            ReplayStatus.in_progress: f"#{n} is not pending (being replayed right now).",
            ReplayStatus.discarded: f"#{n} is not pending (discarded or resolved).",
            ReplayStatus.chat_blocked: f"#{n} not replayed: chat {self.chat_id} blocked the bot. It stays pending "
                                       f"until they write again; /discard {n} drops it.",
            ReplayStatus.other_origin: (f"#{n} is a console turn: it is replayed in the terminal with "
                                        f"`python -m bot dlq replay {n}`, never sent to Telegram."
                                        if self.origin == "console" else
                                        f"#{n} is a Telegram turn: replay it from the bot (/replay {n}) "
                                        f"or `python -m bot dlq replay {n}`."),
        }
        return texts[self.status]


def entry_origin(row: DlqRow) -> Origin:
    return "console" if row.inbound.chat_type == "console" else "telegram"


async def _not_claimed(services: Services, dlq_id: int) -> ReplayResult:
    row = await services.dlq.get(dlq_id)
    if row is None:
        return ReplayResult(dlq_id, ReplayStatus.not_found)
    status = {"replayed": ReplayStatus.already_replayed, "replaying": ReplayStatus.in_progress}.get(
        row.status, ReplayStatus.discarded)
    return ReplayResult(dlq_id, status, chat_id=row.chat_id, origin=entry_origin(row))


async def replay_entry(pipeline: TurnRunner, services: Services, dlq_id: int, channel: Channel, *,
                       origin: Origin = "telegram") -> ReplayResult:
    """Run one DLQ entry again, answering through `channel`; idempotent (the claim is atomic).

    `origin` says which side the channel is: an entry of the other side is left alone."""
    pending = await services.dlq.get(dlq_id)
    if pending is not None and pending.status == "pending":
        if entry_origin(pending) != origin:
            return ReplayResult(dlq_id, ReplayStatus.other_origin, chat_id=pending.chat_id,
                                origin=entry_origin(pending))
        if pending.chat_id is not None and origin == "telegram" and await services.chats.is_blocked(pending.chat_id):
            return ReplayResult(dlq_id, ReplayStatus.chat_blocked, chat_id=pending.chat_id)
    row = await services.dlq.claim_for_replay(dlq_id, now=services.clock.iso())
    if row is None:
        return await _not_claimed(services, dlq_id)
    with new_turn_span(services.tracer, "turn", {"replay.dlq_id": dlq_id, "replay.of": row.trace_id}):
        trace_id = current_trace_id() or "0" * 32
        inbound = row.inbound.model_copy(update={"trace_id": trace_id})
        late = row.first_failed_at[11:16] + " UTC" if len(row.first_failed_at) >= 16 else row.first_failed_at
        outcome = await pipeline.run_turn(inbound, channel, late_of=late, replay_dlq_id=dlq_id)
    ok = outcome in ("replied", "stopped")  # a user who stopped the late answer has it
    await services.dlq.finish_replay(dlq_id, ok=ok, trace_id=trace_id, now=services.clock.iso(),
                               error=None if ok else outcome)
    return ReplayResult(dlq_id, ReplayStatus.answered if ok else ReplayStatus.failed_again, trace_id=trace_id,
                        outcome=outcome, chat_id=row.chat_id, origin=origin)


async def replayable_entries(services: Services, *, limit: int, origin: Origin = "telegram") -> list[DlqRow]:
    """Outage entries of this origin, oldest first, of chats that have not blocked the bot."""
    rows = await services.dlq.replayable_outage_entries(limit=limit + BATCH_LIMIT)  # room for those filtered out
    return [r for r in rows if entry_origin(r) == origin
            and (r.chat_id is None or origin == "console" or not await services.chats.is_blocked(r.chat_id))][:limit]


async def pending_entries(services: Services, *, origin: Origin, limit: int = BATCH_LIMIT) -> list[DlqRow]:
    """Every pending entry of this origin, oldest first."""
    rows = await services.dlq.list("pending", limit=limit + BATCH_LIMIT)
    return sorted((r for r in rows if entry_origin(r) == origin), key=lambda r: r.id)[:limit]


async def replay_pending(pipeline: TurnRunner, services: Services, channel: Channel, *, origin: Origin = "telegram",
                         outage_only: bool = False, pace_s: float = 0.0,
                         provider_up: Callable[[], bool] | None = None) -> list[ReplayResult]:
    """Replay pending entries of one origin, oldest first, `pace_s` apart.

    With `outage_only` (the automatic replay) only entries an outage left are taken, and a replay
    that fails again while `provider_up()` says no stops the run: the provider is down again and
    the breaker will say when it is back. A one-off failure (provider still up) does not."""
    rows = (await replayable_entries(services, limit=BATCH_LIMIT, origin=origin) if outage_only
            else await pending_entries(services, origin=origin))
    results: list[ReplayResult] = []
    for index, row in enumerate(sorted(rows, key=lambda r: r.id)):
        if index and pace_s > 0:
            await asyncio.sleep(pace_s)
        result = await replay_entry(pipeline, services, row.id, channel, origin=origin)
        results.append(result)
        if result.status is ReplayStatus.failed_again and outage_only and provider_up is not None \
                and not provider_up():
            break
    return results
