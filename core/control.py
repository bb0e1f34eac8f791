"""Controlling a running answer: `/stop` ends the turn that is generating in a chat.

Turns of one chat run one at a time (core/pipeline), so a chat has at most one running turn:
`RunningTurns` (core/running.py) maps the chat to that turn's stop signal. The bot handles
`/stop` as a command, outside the chat's turn lock, so it never waits behind the turn it stops.

When a stop arrives, the llm stage's call is cancelled: the streaming HTTP response is closed
(core/llm_stream.py closes it in its `finally`), and the turn goes on with what had streamed.
The partial answer is a normal, non-failure end: shown with STOPPED_MARK, kept in the history,
its tokens accounted (estimated, as the provider sends usage only at the end of a stream), and
never a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import trace

from core.contracts import TokenUsage, UsageRecord, build
from core.usage_prices import cost_usd

if TYPE_CHECKING:
    from core.turn import Turn

STOPPED_MARK = "(stopped)"
T = TypeVar("T")


async def until_stopped(stop: asyncio.Event, call: Awaitable[T]) -> T | None:
    """`call`'s result, or None when `stop` is set first: then the call is cancelled (and waited
    for, so its HTTP stream is closed before the turn goes on)."""
    if stop.is_set():  # stopped before the call: it never starts (no request goes out)
        if inspect.iscoroutine(call):
            call.close()
        return None
    task = asyncio.ensure_future(call)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()  # finished first (or together with the stop): its answer or its error


def stopped_answer(partial: str) -> str:
    """What the user sees, and the history keeps, of an answer stopped midway."""
    partial = partial.rstrip()
    return f"{partial}\n\n{STOPPED_MARK}" if partial else STOPPED_MARK


async def record_stopped_usage(turn: Turn, *, model: str, partial: str) -> None:
    """The stopped attempt's usage row: the prompt it sent and what streamed, estimated (the
    provider's usage comes only at the end of a stream); not wasted, the user chose to stop."""
    services, inbound = turn.services, turn.inbound
    input_tokens = turn.plan.total_tokens if turn.plan is not None else 0
    output_tokens = services.counter.count(partial) if partial else 0
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                       total_tokens=input_tokens + output_tokens, estimated=True)
    price = services.prices.price_for(model)
    record = build(UsageRecord, "usage_record_valid", "pipeline", at=services.clock.now(),
                   trace_id=inbound.trace_id, chat_id=inbound.chat_id, user_id=inbound.user_id, model=model,
                   usage=usage, cost_usd=cost_usd(price=price, input_tokens=input_tokens,
                                                  output_tokens=output_tokens),
                   wasted=False)
    await services.ledger.record(record)
    turn.tokens_spent += usage.total_tokens


async def end_stopped(turn: Turn) -> None:
    """The turn's answer is what streamed before the stop, marked; its tokens are accounted
    when a request went out."""
    partial = turn.streamed.text if turn.streamed is not None else ""
    if turn.llm_request is not None:
        await record_stopped_usage(turn, model=turn.llm_request.model, partial=partial)
    turn.answer = stopped_answer(partial)
    turn.outcome = "stopped"
    trace.get_current_span().add_event("stopped", {"stopped.partial_chars": len(partial)})
