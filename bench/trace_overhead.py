"""What tracing costs a turn: CPU per turn with tracing on vs off, through the real core pipeline.

    .venv/bin/python bench/trace_overhead.py [--turns 200] [--rounds 15] [--profile on|off]
    .venv/bin/python bench/trace_overhead.py --bot   # the real bot process instead, for scale

Each turn runs as the bot runs it (bot/runtime.py): a root `turn` span, a `receive` span around
the inbox journal, then `Pipeline.run_turn` with every stage (real SQLite storage, context
assembly, budget checks, usage ledger), an LLM port that answers at once inside the same GenAI
span as the real adapter (core/llm.py `chat_span`), and a channel that renders the answer like
the Telegram channel (`render` and `send` spans) and records it instead of calling Telegram.
Tracing on is the production setup (the SDK's TracerProvider, core/span_processor.py feeding
the SQLite exporter on its worker thread); off is `build_services(..., tracing=False)` (spans
with ids for refs and traceparent, nothing recorded or exported).

CPU is `time.process_time()` over a whole run of N turns, which counts every thread of the
process, so the exporter's background thread is charged to tracing: each traced run ends with a
flush of everything it queued. Runs alternate (off, on, on, off, ...) in one process so that
drift (CPU frequency, other load) hits both modes alike, each on fresh storage after a few
untimed turns. The spread between runs on a busy machine is larger than the effect, so the
ratio is given three ways (medians, minimums, back-to-back pairs). Real turns also spend CPU
on HTTP to Telegram and the LLM, which this leaves out, so the ratio here is an upper bound
of what tracing adds to a real turn; `--bot` measures that real turn (the `python -m bot`
process against the test stand-ins, tracing off with OTEL_SDK_DISABLED=true).

For a figure free of machine noise, count instructions instead of CPU time: run a fixed number
of turns per mode under `valgrind --tool=callgrind` (with PYTHONHASHSEED=0) and difference the
totals of two run lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace  # noqa: E402

from bot.render import render_parts  # noqa: E402
from config.settings import Settings  # noqa: E402
from core.contracts import AgentRequest, InboundMessage, LLMResult, ReplyEvent, TokenUsage  # noqa: E402
from core.llm import chat_span, record_result  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.ports import DeltaSink  # noqa: E402
from core.services import Services, build_services  # noqa: E402
from core.tracing import current_trace_id, new_turn_span, traceparent_headers  # noqa: E402

CHATS = 50  # turns rotate over this many chats: history grows a little, as in real use


class InstantLLM:
    """An LLM port that answers at once, inside the real adapter's GenAI span."""

    def __init__(self) -> None:
        self.tracer: trace.Tracer = trace.NoOpTracer()  # set once services (and their tracer) exist

    async def complete(self, request: AgentRequest, *, on_delta: DeltaSink | None = None) -> LLMResult:
        with chat_span(self.tracer, request, provider_name="openai") as span:
            traceparent_headers()  # the real adapter builds the header for every request
            text = f"Sure. Here is **the answer** to: {request.messages[-1].content}"
            if on_delta is not None:
                await on_delta(text)
            result = LLMResult(producer="llm", trace_id=current_trace_id() or "0" * 32, text=text,
                               finish_reason="stop", model=request.model,
                               usage=TokenUsage(input_tokens=120, output_tokens=12, total_tokens=132))
            record_result(span, result)
            return result


class RenderingChannel:
    """A Channel that renders whole messages like bot/channel.py and records them."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self.sent: list[int] = []

    async def deliver(self, event: ReplyEvent) -> None:
        if event.kind in ("typing", "draft"):
            return
        with self.tracer.start_as_current_span("render") as span:
            parts = render_parts(event.text)
            span.set_attributes({"reply.kind": event.kind, "reply.chars": len(event.text), "render.parts": len(parts)})
        with self.tracer.start_as_current_span("send") as span:
            span.set_attributes({"chat.id": event.chat_id, "send.parts": len(parts), "send.edits_draft": False})
            self.sent.append(len(parts))

    async def download(self, file_id: str, *, max_bytes: int) -> bytes:
        raise NotImplementedError


class Bench:
    """One set of services (tracing on or off) and the turns run through it."""

    def __init__(self, services: Services, llm: InstantLLM, *, tracing: bool) -> None:
        self.llm = llm
        self.services = services
        self.llm.tracer = self.services.tracer
        self.pipeline = Pipeline(self.services)
        self.channel = RenderingChannel(self.services.tracer)
        self.tracing = tracing
        self.update_id = 0

    @classmethod
    async def open(cls, data_dir: Path, *, tracing: bool) -> Bench:
        settings = Settings(_env_file=None, data_dir=data_dir, operator_chat_id=900, allowed_user_ids="*",
                            user_messages_per_minute=0, user_daily_token_budget=0, retry_wait_scale=0.0)
        llm = InstantLLM()
        return cls(await build_services(settings, llm=llm, tracing=tracing), llm, tracing=tracing)

    async def turn(self) -> str:
        """One message, the way bot/runtime.py handles it."""
        services = self.services
        self.update_id += 1
        update_id, chat_id = self.update_id, 1000 + self.update_id % CHATS
        with new_turn_span(services.tracer, "turn", {"update.id": update_id, "chat.id": chat_id}) as root:
            trace_id = current_trace_id() or "0" * 32
            with services.tracer.start_as_current_span("receive") as span:
                await services.journal.accept(update_id=update_id, chat_id=chat_id, user_id=chat_id, kind="update",
                                        raw={"update_id": update_id}, trace_id=trace_id, now=services.clock.iso())
                span.set_attributes({"update.kind": "message", "update.reason": ""})
            await services.journal.mark(update_id, "processing", now=services.clock.iso(), trace_id=trace_id)
            inbound = InboundMessage(update_id=update_id, trace_id=trace_id, chat_id=chat_id, chat_type="private",
                                     user_id=chat_id, message_id=update_id,
                                     text=f"question number {update_id}: what is {update_id} squared?",
                                     received_at=datetime.now(UTC))
            outcome = await self.pipeline.run_turn(inbound, self.channel)
            root.set_attribute("turn.outcome", outcome)
            await services.journal.mark(update_id, "replied", now=services.clock.iso())
        return outcome

    async def run(self, turns: int) -> float:
        """CPU seconds per turn for `turns` turns, the exporter's work included."""
        started = time.process_time()
        for _ in range(turns):
            outcome = await self.turn()
            if outcome != "replied":
                raise RuntimeError(f"a benchmark turn ended {outcome!r}: the setup is broken")
        if self.tracing:
            self.services.telemetry.force_flush(30_000)  # charge the export of these spans to this run
        return (time.process_time() - started) / turns


async def in_process(args: argparse.Namespace) -> tuple[dict[str, list[float]], int]:
    """Alternating runs through the pipeline in this process; returns CPU s per turn per mode."""
    logging.disable(logging.INFO)  # as in production at LOG_LEVEL=WARNING: no log output in the figures
    per_turn: dict[str, list[float]] = {"off": [], "on": []}
    dropped = 0
    with tempfile.TemporaryDirectory(prefix="trace-bench-") as tmp:
        runs = itertools.count()

        async def one_run(mode: str, *, profile: bool = False) -> float:
            # Fresh storage per run: tables that grow over the benchmark (usage rows are summed
            # every turn) would otherwise make later runs dearer than earlier ones.
            nonlocal dropped
            bench = await Bench.open(Path(tmp) / f"{mode}-{next(runs)}", tracing=mode == "on")
            try:
                await bench.run(args.warmup)  # and its flush creates telemetry.db, which a bot does once
                if not profile:
                    return await bench.run(args.turns)
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="enabled")
                with profiler:
                    cpu = await bench.run(args.turns)
                print(profiler.output_text(unicode=True, color=False, show_all=False))
                return cpu
            finally:
                dropped += bench.services.telemetry.dropped_spans
                await bench.services.close()

        if args.profile:
            await one_run(args.profile, profile=True)
        for round_number in range(args.rounds):
            for mode in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
                per_turn[mode].append(await one_run(mode))
    return per_turn, dropped


def bot_process(args: argparse.Namespace) -> dict[str, list[float]]:
    """The real `python -m bot` against the test stand-ins (tests/fakes), tracing on, or off with
    OTEL_SDK_DISABLED=true; CPU of the bot process per turn from /proc (Linux). This is the
    whole turn as deployed (python-telegram-bot, HTTP, the openai SDK streaming), idle polling
    included, so it shows what tracing weighs in a real turn rather than in the pipeline alone."""
    from tests.e2e.harness import TEST_LLM_KEY, TEST_TOKEN, BotFactory
    from tests.fakes.llm_api import FakeLLM
    from tests.fakes.telegram_api import FakeTelegram

    def cpu_s(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    per_turn: dict[str, list[float]] = {"off": [], "on": []}
    telegram, llm = FakeTelegram(TEST_TOKEN).start(), FakeLLM("gpt-4o-mini", api_key=TEST_LLM_KEY).start()
    try:
        with tempfile.TemporaryDirectory(prefix="trace-bench-bot-") as tmp:
            for round_number in range(args.rounds):
                for mode in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
                    data = Path(tmp) / f"{mode}-{round_number}"
                    data.mkdir()
                    bots = BotFactory(telegram, llm, data, data / "logs")
                    env = {"LOG_LEVEL": "WARNING", "USER_MESSAGES_PER_MINUTE": 0,
                           "OTEL_SDK_DISABLED": "false" if mode == "on" else "true"}
                    process = bots(**env)
                    try:
                        def turn(text: str) -> None:
                            telegram.push_update(telegram.text_update(100, 100, text))
                            telegram.wait_for_text(100, f"echo: {text}", timeout=30)

                        for index in range(args.warmup):
                            turn(f"warm-up {mode} {round_number} {index}")
                        started = cpu_s(process.pid)
                        for index in range(args.turns):
                            turn(f"message {mode} {round_number} {index}")
                        time.sleep(0.7)  # both modes: the exporter's last batch lands in the figure
                        per_turn[mode].append((cpu_s(process.pid) - started) / args.turns)
                    finally:
                        bots.shutdown()
    finally:
        telegram.stop()
        llm.stop()
    return per_turn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, help="timed turns per run (default 200; 40 with --bot)")
    parser.add_argument("--rounds", type=int, help="runs per mode, alternating (default 15; 3 with --bot)")
    parser.add_argument("--warmup", type=int, help="untimed turns first in each run (default 30; 5 with --bot)")
    parser.add_argument("--profile", choices=("on", "off"), help="profile one run of that mode with pyinstrument")
    parser.add_argument("--bot", action="store_true",
                        help="measure the real bot process against the test stand-ins instead (Linux)")
    args = parser.parse_args()
    for name, in_process_default, bot_default in (("turns", 200, 40), ("rounds", 15, 3), ("warmup", 30, 5)):
        if getattr(args, name) is None:
            setattr(args, name, bot_default if args.bot else in_process_default)
    dropped = 0
    if args.bot:
        per_turn = bot_process(args)
        where = "the bot process"
    else:
        per_turn, dropped = asyncio.run(in_process(args))
        where = "in process"

    print(f"{args.rounds} alternating runs of {args.turns} turns per mode, {where} "
          "(CPU time per turn, all threads, µs)")
    for mode, values in per_turn.items():
        shown = " ".join(f"{v * 1e6:.0f}" for v in values)
        print(f"  tracing {mode:<3}: median {statistics.median(values) * 1e6:6.0f}  min {min(values) * 1e6:6.0f}   "
              f"runs: {shown}")
    # On a shared machine the run-to-run spread is larger than the effect, so three estimates:
    # the ratio of the medians, of the minimums (the least disturbed runs), and the median of
    # the ratios of runs taken back to back (which share whatever load there was).
    off, on = statistics.median(per_turn["off"]), statistics.median(per_turn["on"])
    paired = statistics.median(b / a for a, b in zip(per_turn["off"], per_turn["on"], strict=True))
    fastest = min(per_turn["on"]) / min(per_turn["off"])
    print(f"  on/off: medians {on / off:.3f} (+{(on - off) * 1e6:.0f} µs per turn), minimums {fastest:.3f}, "
          f"back-to-back pairs (median) {paired:.3f}")
    if not args.bot:
        print(f"  spans dropped by the exporter: {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
