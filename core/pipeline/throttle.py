"""throttle: the per-user rate limit, before any LLM spend (the console and DLQ replays are exempt)."""

from __future__ import annotations

from opentelemetry import trace

from core.turn import Turn, TurnEnded


async def run(turn: Turn) -> None:
    inbound = turn.inbound
    if inbound.chat_type == "console" or turn.replay_dlq_id is not None:
        return
    decision = turn.services.throttle.hit(inbound.user_id, now_s=turn.services.clock.monotonic())
    trace.get_current_span().set_attribute("throttle.recent", decision.recent)
    if not decision.allowed:
        turn.outcome = "throttled"
        if decision.notify:
            await turn.send("notice", "You are sending messages faster than I can answer "
                            f"({turn.services.throttle.per_minute} per minute). Please wait a moment; "
                            "messages sent meanwhile are not answered.")
        raise TurnEnded("throttled")
