"""Benchmark: per-turn CPU time of the real core pipeline as one conversation grows.

Not a test: it prints figures. It runs `build_services` and `Pipeline` in process (real SQLite
under a temporary DATA_DIR, real tracing, real token counting) with an LLM port that answers at
once, for `--turns` turns in one chat, and reports the CPU time per turn (`time.process_time`,
which includes the span-export thread) averaged over a window around turns 10, 100, 250 and 500.

The context window is small on purpose (default 4096 tokens) so that the history overflows
within the first few turns: from then on every prompt is full, history is archived as it drops
out, and the only thing that still grows is the conversation in the database. The per-turn
cost must stay flat (the prompt build reads stored token counts; only the new message is
counted).

    .venv/bin/python bench/context_growth.py [--turns 500] [--context-tokens 4096] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.settings import Settings  # noqa: E402
from core.contracts import AgentRequest, InboundMessage, LLMResult, TokenUsage  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.ports import DeltaSink  # noqa: E402
from core.services import build_services  # noqa: E402
from core.tracing import current_trace_id, new_turn_span  # noqa: E402

CHAT_ID = USER_ID = 100
WINDOW = 10  # turns averaged per reported point
ANSWER_CHARS = 1000
POINTS = (10, 100, 250, 500)
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa"
         " quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


class InstantLLM:
    """An LLM port that answers at once with a short echo (no network, no sleeping)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.calls = 0

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        self.calls += 1
        text = "Noted: " + (request.messages[-1].content or "")[:ANSWER_CHARS]
        if on_delta is not None:
            await on_delta(text)
        return LLMResult(producer="llm", trace_id=current_trace_id() or "0" * 32, text=text, tool_calls=(),
                         finish_reason="stop", model=self.model,
                         usage=TokenUsage(input_tokens=1000, output_tokens=80, total_tokens=1080))


class NullChannel:
    """A Channel that drops replies (what a real one does with them is not under test here)."""

    def __init__(self) -> None:
        self.finals = 0

    async def deliver(self, event) -> None:  # noqa: ANN001 - ReplyEvent
        self.finals += event.kind == "final"

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        raise RuntimeError("no documents in this benchmark")


def message_text(turn: int) -> str:
    """About 250 tokens, different every turn (so nothing is cached by content): with the answer
    a turn adds about 500 tokens of history, so a 4096-token window is full by turn 7."""
    words = [WORDS[(turn * 7 + i * 3) % len(WORDS)] for i in range(220)]
    return f"Turn {turn}: " + " ".join(words) + "."


async def run(turns: int, context_tokens: int, max_output_tokens: int, data_dir: Path) -> list[float]:
    settings = Settings(_env_file=None, data_dir=data_dir, operator_chat_id=USER_ID, allowed_user_ids=str(USER_ID),
                        llm_context_tokens=context_tokens, llm_max_output_tokens=max_output_tokens,
                        user_daily_token_budget=0, user_messages_per_minute=0, retry_wait_scale=0.0)
    llm = InstantLLM(settings.llm_model)
    services = build_services(settings, llm=llm)
    pipeline, channel = Pipeline(services), NullChannel()
    cpu_per_turn: list[float] = []
    try:
        for number in range(1, turns + 1):
            started = time.process_time()
            with new_turn_span(services.tracer, "turn"):
                inbound = InboundMessage(update_id=number, trace_id=current_trace_id() or "0" * 32,
                                         chat_id=CHAT_ID, chat_type="private", user_id=USER_ID,
                                         text=message_text(number), received_at=datetime.now(UTC))
                outcome = await pipeline.run_turn(inbound, channel)
            cpu_per_turn.append(time.process_time() - started)
            if outcome != "replied":
                raise SystemExit(f"turn {number} ended {outcome!r}: the benchmark needs every turn answered")
        services.telemetry.force_flush()
        stored = services.db.execute("SELECT COUNT(*) FROM messages WHERE chat_id = ?", [CHAT_ID]).fetchone()[0]
        archives = services.db.execute("SELECT COUNT(*) FROM artifact_links WHERE chat_id = ?",
                                       [CHAT_ID]).fetchone()[0]
        last = services.chats.last_prompt(CHAT_ID)
        print(f"{turns} turns answered, {stored} messages stored, {archives} artifacts linked, "
              f"last prompt {last[0] if last else '?'} of {last[1] if last else '?'} tokens, "
              f"hot state {services.hot_state.tokens(CHAT_ID)} tokens")
    finally:
        await services.close()
    return cpu_per_turn


def window_ms(cpu: list[float], around: int) -> tuple[float, float]:
    """Mean and median CPU ms of the WINDOW turns around turn `around` (1-based; the window is
    centred where the run allows). Turns alternate between writing a history archive and not,
    so a window holds both kinds."""
    start = max(0, min(around - 1 - WINDOW // 2, len(cpu) - WINDOW))
    window = cpu[start:start + WINDOW]
    return statistics.fmean(window) * 1000, statistics.median(window) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--context-tokens", type=int, default=4096)
    parser.add_argument("--max-output-tokens", type=int, default=512)
    parser.add_argument("--profile", action="store_true", help="profile the run with pyinstrument")
    args = parser.parse_args()
    os.environ.setdefault("GATEWAY_OFFLINE_TOKENS", "1")  # never try to download an encoding
    with tempfile.TemporaryDirectory(prefix="context-growth-") as tmp:
        coroutine = run(args.turns, args.context_tokens, args.max_output_tokens, Path(tmp) / "data")
        if args.profile:
            from pyinstrument import Profiler

            with Profiler(async_mode="enabled") as profiler:
                cpu = asyncio.run(coroutine)
            profiler.print(show_all=False)
        else:
            cpu = asyncio.run(coroutine)
    points = [p for p in POINTS if p <= len(cpu)]
    figures = {p: window_ms(cpu, p) for p in points}
    print(f"per-turn CPU time over the {WINDOW} turns around each point (mean / median):")
    for point in points:
        mean_ms, median_ms = figures[point]
        print(f"  turn {point:>4}: {mean_ms:6.2f} ms / {median_ms:6.2f} ms")
    if len(points) >= 2:
        first, last = points[0], points[-1]
        print(f"ratio turn {last} / turn {first}: {figures[last][0] / figures[first][0]:.2f} (mean),"
              f" {figures[last][1] / figures[first][1]:.2f} (median)")


if __name__ == "__main__":
    main()
