"""Run the gateway with measuring instruments inside its process, to find out where memory or CPU goes.

    python -m bench.probe --memory OUT.txt --gc OUT.json [run]    # what bench.run --probe starts

Nothing here ships: the bot is imported and run as `python -m bot` would run it, after the
instruments are set up (tracemalloc must start before the first import to see imports).

- `--memory FILE`: tracemalloc with a few frames per allocation; a thread keeps the snapshot
  taken when traced memory was highest (the peak of the run, not what is left at exit) and
  the report at exit groups it by the module whose code made the allocation (importing a
  module counts for that module) and by allocation line. Memory allocated outside Python's
  allocator (tiktoken's Rust tables, SQLite's page cache) is not traced: compare the traced
  total with the process's VmHWM to see how much that is.
- `--gc FILE`: how often each generation of the cyclic garbage collector ran, and the CPU
  seconds it took, as JSON, plus the objects it tracks at exit.
- `--gc-freeze`: what-if: `gc.freeze()` once the bot's modules are imported, so the full
  collections stop re-scanning the ~150,000 objects that imports create and nothing frees.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import sys
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

FRAMES = 12
SNAPSHOT_STEP_BYTES = 2 * 1024 * 1024  # a new peak snapshot only when this much above the kept one
_SKIP = ("<frozen", "importlib", "/bench/probe.py")


class PeakSnapshot:
    """Keeps the tracemalloc snapshot taken at the highest traced memory seen so far."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.snapshot: tracemalloc.Snapshot | None = None
        self.traced_bytes = 0
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-memory", daemon=True)

    def start(self) -> PeakSnapshot:
        tracemalloc.start(FRAMES)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self.sample()

    def sample(self) -> None:
        current, _ = tracemalloc.get_traced_memory()
        if current > self.traced_bytes + SNAPSHOT_STEP_BYTES or self.snapshot is None:
            self.snapshot = tracemalloc.take_snapshot()
            self.traced_bytes = current

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def _owner(frames: tracemalloc.Traceback) -> str:
    """The innermost frame that is not import machinery, as a short module path."""
    for frame in reversed(frames):  # tracemalloc lists the most recent frame last
        name = frame.filename
        if not name.startswith(_SKIP[0]) and not any(part in name for part in _SKIP[1:]):
            for marker in ("site-packages/", "lib/python3.11/", "/bench/", "/core/", "/bot/", "/config/"):
                if marker in name:
                    head = name.split(marker, 1)[1]
                    prefix = marker.strip("/") + "/" if marker.startswith("/") else ""
                    return prefix + (head.split("/", 1)[0] if marker == "site-packages/" else head)
            return name
    return frames[-1].filename if len(frames) else "?"


def memory_report(peak: PeakSnapshot, top: int = 30) -> str:
    snapshot = peak.snapshot
    if snapshot is None:
        return "no snapshot taken"
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = snapshot.statistics("traceback")
    total = sum(stat.size for stat in stats)
    by_owner: Counter[str] = Counter()
    for stat in stats:
        by_owner[_owner(stat.traceback)] += stat.size
    lines = [f"traced Python memory at the peak snapshot: {total / 2**20:.1f} MB", "", "by module (inclusive of imports):"]
    lines += [f"  {size / 2**20:7.2f} MB  {owner}" for owner, size in by_owner.most_common(top)]
    lines += ["", "by allocation line:"]
    for stat in snapshot.statistics("lineno")[:top]:
        frame = stat.traceback[-1]
        source = linecache.getline(frame.filename, frame.lineno).strip()[:90]
        lines.append(f"  {stat.size / 2**20:7.2f} MB  {stat.count:>8} blocks  {frame.filename}:{frame.lineno}  {source}")
    return "\n".join(lines)


class GcTimer:
    """gc.callbacks that count collections and their CPU time per generation."""

    def __init__(self) -> None:
        self.runs = Counter()
        self.seconds: Counter[int] = Counter()
        self.collected = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            generation = info["generation"]
            self.runs[generation] += 1
            self.seconds[generation] += time.thread_time() - self._started
            self.collected[generation] += info["collected"]

    def report(self) -> dict[str, object]:
        return {"runs": dict(self.runs), "cpu_s": {g: round(s, 4) for g, s in self.seconds.items()},
                "collected": dict(self.collected), "tracked_objects_at_exit": len(gc.get_objects()),
                "total_cpu_s": round(sum(self.seconds.values()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=Path, help="write the tracemalloc peak report here")
    parser.add_argument("--gc", type=Path, help="write garbage-collector counts and times here (JSON)")
    parser.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the bot's imports (a what-if)")
    args, rest = parser.parse_known_args(argv)
    peak = PeakSnapshot().start() if args.memory else None
    timer = GcTimer() if args.gc else None
    if timer is not None:
        gc.callbacks.append(timer)
    from bot.__main__ import main as bot_main  # imported only now: tracemalloc sees the imports

    if args.gc_freeze:
        import bot.app  # noqa: F401 - what `run` imports lazily, frozen with the rest
        import core.services  # noqa: F401

        gc.collect()
        gc.freeze()

    try:
        return bot_main(rest or ["run"])
    finally:
        if timer is not None and args.gc:
            args.gc.write_text(json.dumps(timer.report(), indent=1))
        if peak is not None and args.memory:
            peak.stop()
            args.memory.write_text(memory_report(peak))


if __name__ == "__main__":
    sys.exit(main())
