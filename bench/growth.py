"""Per-turn cost against conversation length and database size, measured in process.

    python -m bench.growth [--quick] [--database postgres [--pg-admin-url URL]]

For every pair (history messages in the chat, chats in the database) a fresh DATA_DIR is filled
through core's own repositories (History, Journal, UsageLedger, Chats: the rows a real
deployment of that size would hold: each chat's exchanges, their journal entries and usage
rows, dated this month), then turns run through the real `core.pipeline.Pipeline` with real
storage and tracing, and an in-process LLM port (`tests/core/fakes.ScriptedLLM`) so nothing
but the gateway's own work is timed. `MEASURED_CHATS` chats hold the given history; every
other chat holds `FILLER_MESSAGES`.

CPU per turn = `time.process_time()` (all threads, so the span exporter's work counts) over
`ROUNDS` turns in each measured chat, after one warm-up turn per chat; the mean includes
flushing the turns' spans to telemetry.db. It should stay flat across the table.

With `--database postgres` every pair gets a fresh PostgreSQL database (bench/pg.py) instead of a
DATA_DIR; the size column is then the database's, and the CPU is still this process's alone (the
server's work is not in it; `bench.run --database postgres` reports the server's CPU too).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pg import DATABASES, DEFAULT_PG_ADMIN_URL, database_size_mb, storage_env  # noqa: E402
from config.settings import Settings  # noqa: E402
from core.contracts import AgentRequest, InboundMessage, TokenUsage, UsageRecord  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.services import Services, build_services  # noqa: E402
from core.tracing import current_trace_id, new_turn_span  # noqa: E402
from tests.core.fakes import RecordingChannel, ScriptedLLM  # noqa: E402

HISTORIES = (10, 100, 1000)
CHATS = (10, 100, 10_000)
QUICK_CHATS = (10, 100, 1000)
MEASURED_CHATS = 10
FILLER_MESSAGES = 20
ROUNDS = 3
FIRST_CHAT = 10_000_001
_TEXT = "a message of a typical length in a chat about plans, recipes and the weather this week, nothing more"


@dataclass
class GrowthRow:
    history: int
    chats: int
    db_mb: float
    prompt_messages: int
    median_ms: float
    mean_ms: float
    prefill_s: float
    sdk_ms: float


async def prefill(services: Services, *, chats: int, history: int) -> None:
    """Rows a deployment with `chats` chats would hold; the first MEASURED_CHATS have `history`."""
    now = datetime.now(UTC)
    now_iso = now.isoformat(timespec="milliseconds")
    tokens = services.counter.count_message(f"user message 999 in chat {FIRST_CHAT}: {_TEXT}")
    update_id = 1
    async with services.db.transaction():
        for number in range(chats):
            chat_id = FIRST_CHAT + number
            count = history if number < MEASURED_CHATS else FILLER_MESSAGES
            for index in range(count):
                role = "user" if index % 2 == 0 else "assistant"
                trace_id = f"{update_id:032x}"
                await services.history.append(chat_id=chat_id, role=role, content=f"{role} message {index} in chat "
                                        f"{chat_id}: {_TEXT}", tokens=tokens, trace_id=trace_id,
                                        update_id=update_id, now=now_iso)
                if role == "user":
                    await services.journal.accept(update_id=update_id, chat_id=chat_id, user_id=chat_id, kind="update",
                                            raw={"update_id": update_id}, trace_id=trace_id, now=now_iso)
                    await services.journal.mark(update_id, "replied", now=now_iso)
                else:
                    await services.ledger.record(UsageRecord(
                        at=now, trace_id=trace_id, chat_id=chat_id, user_id=chat_id, model="gpt-4o-mini",
                        usage=TokenUsage(input_tokens=400, output_tokens=40, total_tokens=440), cost_usd=0.0001,
                        wasted=False))
                    update_id += 1
            await services.chats.record_prompt(chat_id, tokens=tokens * count, budget=126_000,
                                         trace_id=f"{update_id:032x}", now=now_iso)


async def _turn(services: Services, pipeline: Pipeline, channel: RecordingChannel, chat_id: int,
                update_id: int) -> None:
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(update_id=update_id, trace_id=current_trace_id(), chat_id=chat_id,
                                 chat_type="private", user_id=chat_id, text=f"new question {update_id}: {_TEXT}",
                                 received_at=datetime.now(UTC))
        outcome = await pipeline.run_turn(inbound, channel)
    if outcome != "replied":
        raise RuntimeError(f"a growth turn ended {outcome}: {channel.texts()[-1:]}")


async def measure(workdir: Path, *, history: int, chats: int, database: str = "sqlite",
                  admin_url: str = DEFAULT_PG_ADMIN_URL) -> GrowthRow:
    with storage_env(database, admin_url) as storage:
        return await _measure(workdir, history=history, chats=chats, database_url=storage.get("DATABASE_URL"))


async def _measure(workdir: Path, *, history: int, chats: int, database_url: str | None) -> GrowthRow:
    data_dir = workdir / f"growth-{history}-{chats}"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(_env_file=None, data_dir=data_dir, operator_chat_id=900, allowed_user_ids="*",
                        retry_wait_scale=0.0, user_daily_token_budget=0, user_messages_per_minute=0,
                        log_level="WARNING", database_url=database_url)
    llm = ScriptedLLM()
    services = await build_services(settings, llm=llm)
    try:
        started = time.monotonic()
        await prefill(services, chats=chats, history=history)
        prefill_s = time.monotonic() - started
        pipeline, channel = Pipeline(services), RecordingChannel()
        measured = [FIRST_CHAT + n for n in range(min(MEASURED_CHATS, chats))]
        update_id = 10**9
        for chat_id in measured:  # warm-up: caches, first-turn work (an archive, if any)
            update_id += 1
            await _turn(services, pipeline, channel, chat_id, update_id)
        services.telemetry.force_flush()
        per_turn: list[float] = []
        cpu0 = time.process_time()
        for _ in range(ROUNDS):
            for chat_id in measured:
                update_id += 1
                before = time.process_time()
                await _turn(services, pipeline, channel, chat_id, update_id)
                per_turn.append(time.process_time() - before)
        services.telemetry.force_flush()
        mean_s = (time.process_time() - cpu0) / len(per_turn)
        db_mb = (database_size_mb(database_url) if database_url
                 else sum(p.stat().st_size for p in data_dir.glob("gateway.db*")) / 2**20)
        prompt = len(llm.requests[-1].messages)
        sdk_ms = await sdk_request_cost_ms(llm.requests[-1])
        return GrowthRow(history, chats, db_mb, prompt, 1000 * statistics.median(per_turn), 1000 * mean_s, prefill_s,
                         sdk_ms)
    finally:
        await services.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def sdk_request_cost_ms(request: AgentRequest, repeat: int = 5) -> float:
    """CPU the openai SDK spends preparing this request before it is sent (its `create()` walks the
    whole payload with its TypedDict transform): what the real adapter adds to the figures above."""
    from openai._utils import async_maybe_transform
    from openai.types.chat import completion_create_params

    body = {"model": request.model, "messages": [m.to_openai() for m in request.messages], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": request.max_output_tokens,
            "tools": [t.to_openai() for t in request.tools]}
    kind = completion_create_params.CompletionCreateParamsStreaming
    await async_maybe_transform(body, kind)
    started = time.process_time()
    for _ in range(repeat):
        await async_maybe_transform(body, kind)
    return 1000 * (time.process_time() - started) / repeat


def run_growth(*, quick: bool, workdir: Path, database: str = "sqlite",
               admin_url: str = DEFAULT_PG_ADMIN_URL) -> list[GrowthRow]:
    rows = []
    for chats in (QUICK_CHATS if quick else CHATS):
        for history in HISTORIES:
            print(f"  growth: {history} history messages, {chats} chats ({database}) ...", flush=True)
            rows.append(asyncio.run(measure(workdir, history=history, chats=chats, database=database,
                                            admin_url=admin_url)))
    return rows


def print_growth(rows: list[GrowthRow]) -> None:
    print("\nPhase 3, per-turn cost growth (in process: real pipeline, storage and tracing; scripted LLM)")
    print(f"  {'history':>8}{'chats':>8}{'database MB':>15}{'prompt msgs':>13}{'CPU ms/turn p50':>17}"
          f"{'mean incl. spans':>18}{'+ openai SDK ms':>17}")
    for row in rows:
        print(f"  {row.history:>8}{row.chats:>8}{row.db_mb:>15.1f}{row.prompt_messages:>13}{row.median_ms:>17.2f}"
              f"{row.mean_ms:>18.2f}{row.sdk_ms:>17.2f}")
    print("  (+ openai SDK ms: what the real adapter's SDK call adds per attempt to prepare that prompt)")
    by = {(r.history, r.chats): r for r in rows}
    histories = sorted({r.history for r in rows})
    chats = sorted({r.chats for r in rows})
    for history in histories:
        low, high = by[(history, chats[0])], by[(history, chats[-1])]
        print(f"  history {history}: {chats[-1]} chats vs {chats[0]}: x{high.mean_ms / low.mean_ms:.2f}")
    for count in chats:
        low, high = by[(histories[0], count)], by[(histories[-1], count)]
        print(f"  {count} chats: history {histories[-1]} vs {histories[0]}: x{high.mean_ms / low.mean_ms:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"chats {QUICK_CHATS} instead of {CHATS}")
    parser.add_argument("--database", choices=DATABASES, default="sqlite", help="SQLite (default) or PostgreSQL")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL, help="where to create the databases")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-growth-"))
    try:
        print_growth(run_growth(quick=args.quick, workdir=workdir, database=args.database,
                                admin_url=args.pg_admin_url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
