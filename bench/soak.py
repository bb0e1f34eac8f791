"""The soak: sustained traffic through the real bot while both stand-ins misbehave, then a tally.

    python -m bench.soak                # 10 minutes (bounded: traffic, then at most --drain s)
    python -m bench.soak --minutes 1    # a quick check

Traffic: `--rate` messages per second on average (Poisson arrivals, seeded) from `--users` users
in private chats. The LLM stand-in fails a seeded share `--fault-rate` of requests, evenly:
a hang past LLM_TIMEOUT_SECONDS, 429 with Retry-After, 500, and a malformed 200 answer. The Bot
API stand-in answers one sendMessage or editMessageText with 429 "retry after 1" now and then
(every `--flood-every` s on average). Short timings: LLM_TIMEOUT_SECONDS=2, RETRY_WAIT_SCALE=0.05,
BREAKER_RESET_SECONDS=5, TELEMETRY_RETENTION_DAYS=1, OPERATOR_CHAT_ID=900. Before the start,
telemetry.db is seeded with spans three days old, which retention must delete.

At the end (after the drain), every injected message must be accounted for, read from
DATA_DIR/gateway.db (journal, dlq) and the stand-in's messages per chat: replied (the answer,
possibly late after a DLQ replay), error-replied with the turn's `ref`, or in the DLQ. Also
printed: RSS sampled every 10 s (first/last/max), SQLite file sizes and rows, messages that
reached the operator chat. Exit 1 if any message is unaccounted for.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.context import Context  # noqa: E402

from bench.common import (  # noqa: E402
    OPERATOR_ID,
    BenchTelegram,
    BotUnderTest,
    LLMServer,
    answer_for,
    describe_setup,
    gateway_env,
    memory_kb,
    percentile,
    question,
    quiet_stand_ins,
)
from core.tracing import setup_tracing  # noqa: E402

RSS_EVERY_S = 10.0
OLD_SPANS = 5000
OLD_SPAN_AGE_DAYS = 3
FIRST_USER = 2001
_REF = re.compile(r"ref: ([0-9a-f]{8})")


@dataclass
class Injected:
    update_id: int
    chat_id: int
    answer: str


@dataclass
class Tally:
    injected: int = 0
    replied: int = 0
    replied_late: int = 0
    error_replied: int = 0
    dlq_only: int = 0
    unaccounted: list[tuple[int, str]] = field(default_factory=list)
    journal_states: Counter[str] = field(default_factory=Counter)
    dlq_states: Counter[str] = field(default_factory=Counter)
    dlq_kinds: Counter[str] = field(default_factory=Counter)
    outbox_pending: int = 0


def seed_old_spans(data_dir: Path, count: int) -> None:
    """Turns from three days ago, written through the gateway's own tracer (core/tracing.py) with
    back-dated timestamps: TELEMETRY_RETENTION_DAYS=1 must remove them while the bot runs."""
    telemetry = setup_tracing(data_dir=data_dir, retention_days=3650)  # nothing pruned while seeding
    start_ns = time.time_ns() - OLD_SPAN_AGE_DAYS * 86_400 * 10**9
    for number in range(count):
        span = telemetry.tracer.start_span("turn", context=Context(), attributes={"chat.id": 1, "note": "x" * 200},
                                           start_time=start_ns + number * 1000)
        span.end(end_time=start_ns + number * 1000 + 500)
        if number % 500 == 499:
            telemetry.force_flush()  # the export queue is bounded: never let it drop a seeded span
    telemetry.force_flush()
    telemetry.shutdown()


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def tally(data_dir: Path, fake: BenchTelegram, injected: list[Injected]) -> Tally:
    result = Tally(injected=len(injected))
    conn = _read_only(data_dir / "gateway.db")
    try:
        journal = {row[0]: (row[1], row[2]) for row in
                   conn.execute("SELECT update_id, state, trace_id FROM journal")}
        dlq = {row[0]: row[1] for row in conn.execute("SELECT update_id, status, error_kind FROM dlq")}
        for status, kind in conn.execute("SELECT status, error_kind FROM dlq"):
            result.dlq_states[status] += 1
            result.dlq_kinds[kind] += 1
        result.outbox_pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
    finally:
        conn.close()
    texts: dict[int, list[str]] = {}
    refs: dict[int, set[str]] = {}
    for chat_id in {m.chat_id for m in injected}:
        texts[chat_id] = [m.plain_text or "" for m in fake.messages(chat_id)]
        refs[chat_id] = {ref for text in texts[chat_id] for ref in _REF.findall(text)}
    for message in injected:
        state, trace_id = journal.get(message.update_id, ("not journaled", None))
        result.journal_states[state] += 1
        shown = [t for t in texts[message.chat_id] if message.answer in t]
        if shown:
            result.replied += 1
            result.replied_late += any(t != message.answer for t in shown)
        elif trace_id and trace_id[:8] in refs[message.chat_id]:
            result.error_replied += 1
        elif message.update_id in dlq:
            result.dlq_only += 1
        else:
            result.unaccounted.append((message.update_id, state))
    return result


def sqlite_report(data_dir: Path) -> list[str]:
    lines = []
    for name in ("gateway.db", "gateway.db-wal", "telemetry.db", "telemetry.db-wal"):
        path = data_dir / name
        if path.exists():
            lines.append(f"  {name:18}{path.stat().st_size / 2**20:9.2f} MB")
    artifacts = data_dir / "artifacts"
    if artifacts.exists():
        size = sum(p.stat().st_size for p in artifacts.rglob("*") if p.is_file())
        lines.append(f"  {'artifacts/':18}{size / 2**20:9.2f} MB")
    conn = _read_only(data_dir / "gateway.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_%' ESCAPE '\\'"
                                             " ORDER BY name")]
        counts = [f"{t} {conn.execute(f'SELECT COUNT(*) FROM [{t}]').fetchone()[0]}" for t in tables]
    finally:
        conn.close()
    lines.append("  gateway.db rows: " + ", ".join(counts))
    conn = _read_only(data_dir / "telemetry.db")
    try:
        cutoff = time.time_ns() - 86_400 * 10**9
        old = conn.execute("SELECT COUNT(*) FROM spans WHERE start_ns < ?", [cutoff]).fetchone()[0]
        total = conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    finally:
        conn.close()
    lines.append(f"  telemetry.db spans: {total} (older than the 1-day retention: {old}, "
                 f"of {OLD_SPANS} seeded {OLD_SPAN_AGE_DAYS} days old)")
    return lines


def alert_report(fake: BenchTelegram, started: float) -> tuple[int, int, Counter[str]]:
    """Messages in the operator chat: total, most in any 60 s, and count per alert kind."""
    calls = [c for c in fake.calls("sendMessage") if c.params.get("chat_id") == OPERATOR_ID and c.at >= started]
    kinds: Counter[str] = Counter()
    for message in fake.messages(OPERATOR_ID):
        found = re.search(r"^kind: (\S+)", message.plain_text or "", re.M)
        kinds[found.group(1) if found else "other"] += 1
    times = sorted(c.at for c in calls)
    peak = max((sum(1 for t in times if start <= t < start + 60) for start in times), default=0)
    return len(fake.messages(OPERATOR_ID)), peak, kinds


def run(args: argparse.Namespace) -> int:
    quiet_stand_ins()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    seed_old_spans(data_dir, OLD_SPANS)
    rng = random.Random(args.seed)
    users = list(range(FIRST_USER, FIRST_USER + args.users))
    print(f"soak: {args.minutes:g} min, {args.rate:g} msg/s from {args.users} users, LLM fault rate "
          f"{args.fault_rate:g}, flood control every ~{args.flood_every:g} s, seed {args.seed}; work dir {workdir}")
    print(f"  {describe_setup()}")
    llm = LLMServer(answer_chars=args.answer_chars, fault_rate=args.fault_rate, seed=args.seed, hang_s=3.0,
                    log_path=workdir / "llm.log").start()
    fake = BenchTelegram().start()
    bot: BotUnderTest | None = None
    injected: list[Injected] = []
    rss: list[tuple[float, float]] = []
    floods = 0
    try:
        env = gateway_env(fake, llm, data_dir, LLM_TIMEOUT_SECONDS="2", RETRY_WAIT_SCALE="0.05", GATEWAY_TEST_HOOKS="1",
                          BREAKER_RESET_SECONDS="5", TELEMETRY_RETENTION_DAYS="1", USER_DAILY_TOKEN_BUDGET="0")
        bot = BotUnderTest("ours", [sys.executable, "-m", "bot", "run"], env, workdir / "bot.log").start()
        bot.wait_polling(fake, needs="setMyCommands")
        started = time.monotonic()
        end = started + 60 * args.minutes
        next_message = started + rng.expovariate(args.rate)
        next_flood = started + rng.expovariate(1 / args.flood_every)
        next_rss, next_progress = started, started + 60
        sent_per_user: Counter[int] = Counter()
        while True:
            now = time.monotonic()
            if now >= next_rss:
                rss.append((now - started, memory_kb(bot.pid, "VmRSS") / 1024))
                next_rss += RSS_EVERY_S
            if now >= end:
                break
            if not bot.alive():
                print(f"! the bot died during the soak:\n{bot.tail(20)}")
                break
            if now >= next_flood:
                fake.fail(rng.choice(["sendMessage", "editMessageText"]), 429, retry_after=1)
                floods += 1
                next_flood += rng.expovariate(1 / args.flood_every)
            if now >= next_progress:
                print(f"  {int((now - started) / 60)} min: {len(injected)} sent, {fake.delivered_count()} answered "
                      f"so far, RSS {rss[-1][1]:.0f} MB", flush=True)
                next_progress += 60
            if now >= next_message:
                user = rng.choice(users)
                text = question(user, sent_per_user[user])
                sent_per_user[user] += 1
                answer = answer_for(text, args.answer_chars)
                update_id = fake.inject(user, user, text, answer, (user, text))
                injected.append(Injected(update_id, user, answer))
                next_message += rng.expovariate(args.rate)
                continue
            time.sleep(min(0.05, max(0.0, min(next_message, next_flood, next_rss, end) - time.monotonic())))
        print(f"  traffic done: {len(injected)} messages; draining (at most {args.drain:g} s) ...", flush=True)
        drain_end = time.monotonic() + args.drain
        while time.monotonic() < drain_end and bot.alive():
            current = tally(data_dir, fake, injected)
            busy = current.journal_states["received"] + current.journal_states["processing"]
            if not current.unaccounted and not busy and not current.outbox_pending \
                    and not current.dlq_states["replaying"]:
                break
            time.sleep(2.0)
        if bot.alive():
            rss.append((time.monotonic() - started, memory_kb(bot.pid, "VmRSS") / 1024))
        llm_stats = llm.stats()
        code = bot.stop()
        final = tally(data_dir, fake, injected)
        alerts, peak, kinds = alert_report(fake, started)
        latencies = [1000 * v for v in fake.latency_s.values()]
        hangups = len(fake.server_errors())
    finally:
        if bot is not None:
            bot.stop()
        fake.stop()
        llm.stop()
    print_report(args, final, llm_stats, floods, rss, sqlite_report(data_dir), (alerts, peak, kinds), latencies,
                 code)
    print(f"(the Bot API stand-in saw {hangups} request(s) abandoned mid-way by the bot, e.g. a cancelled"
          " 'typing' call)")
    return 1 if final.unaccounted else 0


def print_report(args: argparse.Namespace, final: Tally, llm_stats: dict[str, int], floods: int,
                 rss: list[tuple[float, float]], sqlite_lines: list[str], alerts: tuple[int, int, Counter[str]],
                 latencies: list[float], exit_code: int | None) -> None:
    print("\nTally")
    print(f"  injected messages              {final.injected}")
    print(f"  replied with the answer        {final.replied} (of which late, after a DLQ replay: "
          f"{final.replied_late})")
    print(f"  error reply with its ref       {final.error_replied}")
    print(f"  in the DLQ, no reply           {final.dlq_only}")
    print(f"  UNACCOUNTED                    {len(final.unaccounted)}"
          + (f"  e.g. {final.unaccounted[:10]}" if final.unaccounted else ""))
    print(f"  journal states: {dict(final.journal_states)}; DLQ: {dict(final.dlq_states)} "
          f"by kind {dict(final.dlq_kinds)}; outbox pending {final.outbox_pending}")
    print(f"  answer latency ms (answered turns): p50 {percentile(latencies, 50):.0f}, "
          f"p95 {percentile(latencies, 95):.0f}, p99 {percentile(latencies, 99):.0f}")
    faults = {k: v for k, v in llm_stats.items() if k not in ("requests", "ok")}
    print(f"\nInjected faults: LLM requests {llm_stats.get('requests', 0)}, ok {llm_stats.get('ok', 0)}, "
          f"faults {faults}; Bot API flood control (429 retry_after=1): {floods}")
    values = [v for _, v in rss]
    if values:
        half = values[len(values) // 2]
        print(f"\nMemory (RSS every {RSS_EVERY_S:g} s, {len(values)} samples): first {values[0]:.1f} MB, "
              f"last {values[-1]:.1f} MB, max {max(values):.1f} MB; second half grew {values[-1] - half:+.1f} MB")
    print("\nSQLite")
    for line in sqlite_lines:
        print(line)
    total, peak, kinds = alerts
    print(f"\nOperator chat ({OPERATOR_ID}): {total} messages, at most {peak} in any 60 s; by kind {dict(kinds)}")
    print(f"\nbot exit code after SIGTERM: {exit_code}")
    print("RESULT: every message accounted for" if not final.unaccounted
          else f"RESULT: {len(final.unaccounted)} message(s) UNACCOUNTED")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of traffic (default 10)")
    parser.add_argument("--rate", type=float, default=3.0, help="messages per second on average (default 3)")
    parser.add_argument("--users", type=int, default=200, help="distinct users (default 200)")
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of LLM requests that fail (0.2)")
    parser.add_argument("--flood-every", type=float, default=15.0, help="mean seconds between Bot API 429s")
    parser.add_argument("--drain", type=float, default=120.0, help="max seconds to wait after the traffic")
    parser.add_argument("--answer-chars", type=int, default=200)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workdir", type=Path, help="keep the data and the bot's log here")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
