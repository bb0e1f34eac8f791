"""The benchmark: the gateway against the plain PTB + openai bot, same load, same stand-ins.

    python -m bench.run            # full: 50 users x 20 messages, then 30 msg/s for 20 s, then growth
    python -m bench.run --quick    # a smaller version of the same, about a minute
    python -m bench.run --database postgres   # ours on PostgreSQL (DATABASE_URL) instead of SQLite

Phase 1 (saturation): every user keeps exactly one message in flight and sends the next one the
moment the previous answer is delivered (a closed loop: `--users` messages are always waiting,
which saturates either bot without a queue that only measures its own length). Measured per bot:
messages per second until the last reply is delivered, CPU seconds per message of the bot
process (/proc/<pid>/stat, warm-up excluded), p50/p95/p99 added latency (update queued for
getUpdates -> final text delivered; the LLM stand-in answers at once, so all of it is added by
the bot), peak RSS (VmHWM).

Phase 2 (Telegram's ceiling for one bot): `--rate` messages per second offered on a fixed
schedule for `--duration` seconds, round-robin over the users, whatever the bot does: every
reply must arrive, with p95 added latency under 100 ms.

Phase 3 (per-turn cost growth): `bench/growth.py`, in process.

Each bot runs as its own process against a fresh Bot API stand-in (in this process) and the
shared LLM stand-in (its own process); ours with a fresh DATA_DIR, LOG_LEVEL=WARNING, no token
budget, no per-user throttle, ALLOWED_USER_IDS=*. A few warm-up turns run before measuring.
With `--database postgres` ours keeps its state in a fresh PostgreSQL database per phase,
created and dropped by the bench on the server of `--pg-admin-url` (bench/pg.py); the default
is SQLite under DATA_DIR. The baseline keeps no state either way.

Options for finding out why: `--profile` records a py-spy profile of each bot per phase (needs
`pip install py-spy`; read it with `python -m bench.profile_summary FILE`); `--probe memory` and
`--probe gc` run ours with instruments inside its process (bench/probe.py: tracemalloc at the
peak, garbage-collector runs and CPU) and write their reports to the work dir.

Pacing: the gateway paces its Bot API calls at Telegram's 30 per second
(TELEGRAM_SENDS_PER_SECOND); the baseline, like most scripts, does not pace at all. Phase 1
measures capacity, so by default neither bot is paced there (ours with
TELEGRAM_SENDS_PER_SECOND=0) and the stand-in, which enforces no flood limit, is the same for
both; `--paced` runs phase 1 with both bots at Telegram's 30/s instead (the baseline with PTB's
AIORateLimiter). Phase 2 runs ours with its default pacing.
"""

from __future__ import annotations

import argparse
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BenchTelegram,
    BotUnderTest,
    LLMServer,
    answer_for,
    baseline_env,
    cpu_seconds,
    describe_setup,
    gateway_env,
    load_average,
    memory_kb,
    percentile,
    question,
    quiet_stand_ins,
    self_cpu_seconds,
)
from bench.pg import (  # noqa: E402
    DATABASES,
    DEFAULT_PG_ADMIN_URL,
    server_cpu,
    server_cpu_between,
    shown,
    storage_env,
)

WARMUP_USERS = (90_001, 90_002, 90_003)
WARMUP_MESSAGES = 2
BOTS = ("ours", "baseline")
GOAL_P95_MS = 100.0
TELEGRAM_SEND_METHODS = ("sendMessage", "editMessageText", "sendChatAction", "sendMessageDraft")


@dataclass
class PhaseResult:
    bot: str
    phase: str
    offered: int
    delivered: int = 0
    wall_s: float = float("nan")
    cpu_s: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = float("nan")
    api_calls: int = 0
    calls_by_method: dict[str, int] = field(default_factory=dict)
    harness_cpu_s: float = 0.0
    llm_cpu_s: float = 0.0
    max_slip_ms: float = 0.0
    db_cpu_s: float = float("nan")  # PostgreSQL's backends serving the bot (NaN on SQLite: in the bot's own CPU)

    @property
    def throughput(self) -> float:
        return self.delivered / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def cpu_ms_per_msg(self) -> float:
        return 1000 * self.cpu_s / self.delivered if self.delivered else float("nan")

    @property
    def db_cpu_ms_per_msg(self) -> float:
        return 1000 * self.db_cpu_s / self.delivered if self.delivered else float("nan")

    def p(self, pct: float) -> float:
        return percentile(self.latencies_ms, pct)


# Load shapes --------------------------------------------------------------------------------
def closed_loop(fake: BenchTelegram, users: list[int], per_user: int, *, answer_chars: int, tag: str,
                timeout_s: float) -> list[tuple]:
    """Each user sends its next message when the answer to the previous one arrives."""
    sent = dict.fromkeys(users, 0)
    keys: list[tuple] = []

    def send(user: int) -> None:
        index = sent[user]
        sent[user] += 1
        text = question(user, index)
        key = (tag, user, index)
        keys.append(key)
        fake.inject(user, user, text, answer_for(text, answer_chars), key)

    def on_delivered(key: tuple) -> None:
        if key[0] == tag and sent[key[1]] < per_user:
            send(key[1])

    fake.on_delivered = on_delivered
    with fake.lock:  # the first message of every user goes out before any answer is handled
        for user in users:
            send(user)
    wait_for_replies(fake, tag, len(users) * per_user, timeout_s)
    fake.on_delivered = None
    return keys


def open_loop(fake: BenchTelegram, users: list[int], *, rate: float, duration_s: float, answer_chars: int,
              tag: str, drain_s: float) -> tuple[list[tuple], float]:
    """`rate` messages per second on a fixed schedule, whatever the bot does; returns the max slip."""
    count = int(rate * duration_s)
    keys: list[tuple] = []
    start = time.monotonic() + 0.05
    max_slip = 0.0
    for number in range(count):
        target = start + number / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        user, index = users[number % len(users)], number // len(users)
        text = question(user, index)
        key = (tag, user, index)
        keys.append(key)
        fake.inject(user, user, text, answer_for(text, answer_chars), key)
        max_slip = max(max_slip, time.monotonic() - target)
    wait_for_replies(fake, tag, count, drain_s)
    return keys, max_slip


def wait_for_replies(fake: BenchTelegram, tag: str, total: int, timeout_s: float, stall_s: float = 30.0) -> None:
    """Until `total` answers of this phase arrived; gives up after `timeout_s`, or `stall_s` without one."""
    deadline = time.monotonic() + timeout_s
    seen, last_progress = -1, time.monotonic()
    while True:
        if time.monotonic() >= deadline:
            print(f"  ! stopped waiting after {timeout_s:.0f} s (--timeout): {seen}/{total} delivered")
            return
        done = fake.delivered_count(tag)
        if done >= total:
            return
        if done != seen:
            seen, last_progress = done, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            print(f"  ! no reply for {stall_s:.0f} s ({done}/{total} delivered); giving up on this phase")
            return
        time.sleep(0.01)


# One bot, one phase ---------------------------------------------------------------------------
def start_bot(kind: str, fake: BenchTelegram, llm: LLMServer, workdir: Path, phase: str,
              probes: list[str], paced: bool, storage: dict[str, str]) -> BotUnderTest:
    if kind == "ours":
        data_dir = workdir / f"data-{phase}"
        shutil.rmtree(data_dir, ignore_errors=True)
        env = gateway_env(fake, llm, data_dir, USER_DAILY_TOKEN_BUDGET="0", USER_MESSAGES_PER_MINUTE="0", **storage)
        if not paced:
            env["TELEGRAM_SENDS_PER_SECOND"] = "0"
        argv = [sys.executable, "-m", "bot", "run"]
        if probes:  # the same bot with instruments inside (bench/probe.py)
            outputs = {"memory": f"probe-memory-{phase}.txt", "gc": f"probe-gc-{phase}.json"}
            argv = [sys.executable, "-m", "bench.probe", *(f"--{probe}={workdir / outputs[probe]}"
                                                          if probe in outputs else f"--{probe}" for probe in probes),
                    "run"]
        bot = BotUnderTest("ours", argv, env, workdir / f"ours-{phase}.log")
        needs = "setMyCommands"
    else:
        env = baseline_env(fake, llm)
        if paced:
            env["BASELINE_RATE_LIMITER"] = "1"
        bot = BotUnderTest("baseline", [sys.executable, "bench/baseline_bot.py"], env,
                           workdir / f"baseline-{phase}.log")
        needs = None
    bot.start()
    bot.wait_polling(fake, needs=needs, timeout_s=180 if probes else 30)  # tracemalloc slows the start a lot
    return bot


def start_profiler(pid: int, out: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("  (--profile: py-spy not found; pip install py-spy)")
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(profiler: subprocess.Popen | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(5)


def run_phase(kind: str, phase: str, args: argparse.Namespace, llm: LLMServer, workdir: Path) -> PhaseResult:
    """One bot through one phase; ours on a storage of its own (a fresh database on PostgreSQL)."""
    database = args.database if kind == "ours" else "sqlite"
    with storage_env(database, args.pg_admin_url) as storage:
        return _run_phase(kind, phase, args, llm, workdir, storage)


def _run_phase(kind: str, phase: str, args: argparse.Namespace, llm: LLMServer, workdir: Path,
               storage: dict[str, str]) -> PhaseResult:
    users = list(range(1001, 1001 + args.users))
    fake = BenchTelegram().start()
    bot: BotUnderTest | None = None
    profiler = None
    try:
        paced = args.paced if phase == "saturation" else kind == "ours" or args.paced
        bot = start_bot(kind, fake, llm, workdir, phase, args.probe, paced, storage)
        closed_loop(fake, list(WARMUP_USERS), WARMUP_MESSAGES, answer_chars=args.answer_chars, tag="warm",
                    timeout_s=30)
        warm = fake.delivered_count("warm")
        if warm < len(WARMUP_USERS) * WARMUP_MESSAGES:
            print(f"  ! {kind}: only {warm} warm-up replies; log tail:\n{bot.tail(12)}")
        if args.profile:
            profiler = start_profiler(bot.pid, workdir / f"profile-{kind}-{phase}.txt")
            time.sleep(0.5)
        cpu0, harness0, llm0 = cpu_seconds(bot.pid), self_cpu_seconds(), cpu_seconds(llm.pid)
        db0 = server_cpu(storage.get("DATABASE_URL"))
        calls0 = fake.api_calls(*TELEGRAM_SEND_METHODS)
        if phase == "saturation":
            offered = args.users * args.messages
            keys = closed_loop(fake, users, args.messages, answer_chars=args.answer_chars, tag=phase,
                               timeout_s=args.timeout)
            slip = 0.0
        else:
            offered = int(args.rate * args.duration)
            keys, slip = open_loop(fake, users, rate=args.rate, duration_s=args.duration,
                                   answer_chars=args.answer_chars, tag=phase, drain_s=args.timeout)
        result = PhaseResult(kind, phase, offered, max_slip_ms=1000 * slip)
        result.cpu_s = cpu_seconds(bot.pid) - cpu0
        if "DATABASE_URL" in storage:
            result.db_cpu_s = server_cpu_between(db0, server_cpu(storage["DATABASE_URL"]))
        result.harness_cpu_s = self_cpu_seconds() - harness0
        result.llm_cpu_s = cpu_seconds(llm.pid) - llm0
        result.peak_rss_mb = memory_kb(bot.pid, "VmHWM") / 1024
        calls = fake.api_calls(*TELEGRAM_SEND_METHODS) - calls0
        result.api_calls, result.calls_by_method = sum(calls.values()), dict(calls)
        done = [k for k in keys if k in fake.latency_s]
        result.delivered = len(done)
        result.latencies_ms = [1000 * fake.latency_s[k] for k in done]
        if done:
            first = min(fake.injected_at[k] for k in keys)
            result.wall_s = max(fake.injected_at[k] + fake.latency_s[k] for k in done) - first
        return result
    finally:
        stop_profiler(profiler)
        if bot is not None:
            code = bot.stop()
            if code not in (0, None):
                print(f"  ! {kind} exited with {code}; log tail:\n{bot.tail(15)}")
        fake.stop()


# Report ---------------------------------------------------------------------------------------
def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def _div(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else float("nan")


def _ratio(ours: float, base: float) -> str:
    if any(math.isnan(v) for v in (ours, base)) or base == 0:
        return "n/a"
    return f"{ours / base:.2f}"


def print_phase(title: str, ours: PhaseResult, base: PhaseResult) -> None:
    print(f"\n{title}")
    rows = [
        ("offered messages", ours.offered, base.offered, 0),
        ("replies delivered", ours.delivered, base.delivered, 0),
        ("messages/s (until last reply)", ours.throughput, base.throughput, 1),
        ("CPU ms per message (bot)", ours.cpu_ms_per_msg, base.cpu_ms_per_msg, 2),
        *([("  + PostgreSQL server CPU ms", ours.db_cpu_ms_per_msg, float("nan"), 2)]
          if not math.isnan(ours.db_cpu_s) else []),
        ("p50 added latency ms", ours.p(50), base.p(50), 1),
        ("p95 added latency ms", ours.p(95), base.p(95), 1),
        ("p99 added latency ms", ours.p(99), base.p(99), 1),
        ("peak RSS MB (VmHWM)", ours.peak_rss_mb, base.peak_rss_mb, 1),
        ("messages per CPU second (bot)", _div(1000, ours.cpu_ms_per_msg), _div(1000, base.cpu_ms_per_msg), 1),
        ("bot CPU busy, % of one core", _div(100 * ours.cpu_s, ours.wall_s), _div(100 * base.cpu_s, base.wall_s), 0),
        ("Bot API calls per message", _div(ours.api_calls, ours.delivered), _div(base.api_calls, base.delivered), 2),
        ("Bot API calls per second", _div(ours.api_calls, ours.wall_s), _div(base.api_calls, base.wall_s), 1),
    ]
    print(f"  {'':34}{'ours':>12}{'baseline':>12}{'ours/base':>11}")
    for label, a, b, digits in rows:
        print(f"  {label:34}{_fmt(float(a), digits):>12}{_fmt(float(b), digits):>12}{_ratio(float(a), float(b)):>11}")
    for result in (ours, base):
        if result.calls_by_method:
            shown = ", ".join(f"{k} {v / max(1, result.delivered):.2f}" for k, v in sorted(result.calls_by_method.items()))
            print(f"  {result.bot} Bot API calls per message: {shown}")
    print(f"  stand-ins' CPU s (harness+Bot API / LLM): ours {ours.harness_cpu_s:.1f}/{ours.llm_cpu_s:.1f}, "
          f"baseline {base.harness_cpu_s:.1f}/{base.llm_cpu_s:.1f}"
          + (f"; injector max slip ms: ours {ours.max_slip_ms:.0f}, baseline {base.max_slip_ms:.0f}"
             if ours.phase != "saturation" else ""))


def print_goals(sat: tuple[PhaseResult, PhaseResult], c_ours: PhaseResult, rate: float) -> None:
    s_ours, s_base = sat

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    throughput = s_ours.throughput / s_base.throughput if s_base.throughput else float("nan")
    cpu = s_ours.cpu_ms_per_msg / s_base.cpu_ms_per_msg if s_base.cpu_ms_per_msg else float("nan")
    print("\nGoals")
    print(f"  throughput ratio >= 1.0 at saturation:     {_fmt(throughput, 2):>6}  {mark(throughput >= 1.0)}")
    print(f"  CPU per message <= baseline's:             {_fmt(cpu, 2):>6}  {mark(cpu <= 1.0)}")
    everything = c_ours.delivered == c_ours.offered
    print(f"  at {rate:g} msg/s, every reply delivered:     {c_ours.delivered}/{c_ours.offered}  {mark(everything)}")
    print(f"  p95 added latency < {GOAL_P95_MS:.0f} ms at the ceiling:      {_fmt(c_ours.p(95), 1):>6}  "
          f"{mark(c_ours.p(95) < GOAL_P95_MS)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, help="concurrent users (default 50; --quick 20)")
    parser.add_argument("--messages", type=int, help="messages per user in phase 1 (default 20; --quick 5)")
    parser.add_argument("--rate", type=float, default=30.0, help="messages/s offered in phase 2 (default 30)")
    parser.add_argument("--duration", type=float, help="seconds of phase 2 (default 20; --quick 5)")
    parser.add_argument("--answer-chars", type=int, default=200, help="length of each answer (default 200)")
    parser.add_argument("--timeout", type=float, help="max seconds to wait for the replies of a phase")
    parser.add_argument("--quick", action="store_true", help="small load, growth on a smaller grid")
    parser.add_argument("--only", choices=["saturation", "ceiling", "growth"], action="append",
                        help="run only these phases (repeatable)")
    parser.add_argument("--bot", choices=BOTS, action="append", help="run only this bot (repeatable)")
    parser.add_argument("--probe", choices=["memory", "gc", "gc-freeze"], action="append", default=[],
                        help="run ours with tracemalloc or garbage-collector counters inside, or with "
                             "gc.freeze() after its imports (bench/probe.py)")
    parser.add_argument("--paced", action="store_true",
                        help="phase 1 with both bots paced at Telegram's 30 calls/s (default: neither)")
    parser.add_argument("--profile", action="store_true", help="record a py-spy profile of each bot in each phase")
    parser.add_argument("--workdir", type=Path, help="keep logs, data and profiles here (default: a temp dir)")
    parser.add_argument("--database", choices=DATABASES, default="sqlite",
                        help="where ours keeps its state: SQLite under DATA_DIR (default) or a fresh PostgreSQL "
                             "database per run, created and dropped by the bench")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL,
                        help=f"the PostgreSQL server to create those databases on (default {DEFAULT_PG_ADMIN_URL})")
    args = parser.parse_args(argv)
    args.users = args.users or (20 if args.quick else 50)
    args.messages = args.messages or (5 if args.quick else 20)
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    args.timeout = args.timeout or (90.0 if args.quick else 300.0)
    args.only = set(args.only or ["saturation", "ceiling", "growth"])
    args.bot = tuple(b for b in BOTS if b in (args.bot or BOTS))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_stand_ins()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"bench: {args.users} users x {args.messages} messages; ceiling {args.rate:g} msg/s for "
          f"{args.duration:g} s; answers of {args.answer_chars} chars; work dir {workdir}")
    print(f"  {describe_setup()}")
    print("  ours on " + ("SQLite (a fresh DATA_DIR per phase)" if args.database == "sqlite" else
                          f"PostgreSQL (a fresh database per phase on {shown(args.pg_admin_url)})"))
    if args.paced:
        print("  paced: both bots at Telegram's 30 calls/s in every phase (the baseline with PTB's AIORateLimiter)")
    else:
        print("  saturation unpaced (ours with TELEGRAM_SENDS_PER_SECOND=0, the baseline has no limiter);"
              " ceiling: ours paced at 30/s")
    if args.probe:
        print(f"  ours runs WITH probes inside: {', '.join(args.probe)} (bench/probe.py; its figures are not comparable)")
    results: dict[tuple[str, str], PhaseResult] = {}
    phases = [p for p in ("saturation", "ceiling") if p in args.only]
    if phases:
        llm = LLMServer(answer_chars=args.answer_chars, log_path=workdir / "llm.log").start()
        try:
            for phase in phases:
                for kind in args.bot:
                    print(f"  running {phase} with {kind} ...", flush=True)
                    results[(kind, phase)] = run_phase(kind, phase, args, llm, workdir)
        finally:
            llm.stop()
    missing = {bot: PhaseResult(bot, "skipped", 0) for bot in BOTS}
    if "saturation" in args.only:
        print_phase(f"Phase 1, saturation: {args.users} users x {args.messages} messages, closed loop",
                    results.get(("ours", "saturation"), missing["ours"]),
                    results.get(("baseline", "saturation"), missing["baseline"]))
    if "ceiling" in args.only:
        print_phase(f"Phase 2, ceiling: {args.rate:g} messages/s offered for {args.duration:g} s",
                    results.get(("ours", "ceiling"), missing["ours"]),
                    results.get(("baseline", "ceiling"), missing["baseline"]))
    if {"saturation", "ceiling"} <= args.only and len(args.bot) == 2:
        print_goals((results[("ours", "saturation")], results[("baseline", "saturation")]),
                    results[("ours", "ceiling")], args.rate)
    if "growth" in args.only:
        from bench.growth import print_growth, run_growth

        print_growth(run_growth(quick=args.quick, workdir=workdir))
    print(f"\nafterwards: {load_average()} (other work on the machine makes latency and throughput noisy;"
          " CPU per message is the steadiest figure)")
    if args.profile:
        print(f"\npy-spy profiles (raw collapsed stacks) in {workdir}")
    for report in sorted(workdir.glob("probe-*")):
        print(f"\n{report.name}:\n{report.read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
