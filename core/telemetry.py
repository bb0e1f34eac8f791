"""Read-side of the spans: look up a trace by its ref, list recent turns, score models.

Used by `python -m bot trace`/`traces`, `/trace`, `/status` and the scoreboard; the write side
(and the layout: a row per trace and export batch) is core/span_store.py. Every query takes a
span source (core/span_source.py): telemetry.db or PostgreSQL, the same SQL and the same results
on both. Queries open their own connection (the exporter's lives on another thread), take
parameters only (a ref is validated as hex first), and treat a missing database or table as
"nothing recorded yet" rather than an error; an unreachable PostgreSQL is logged in one line
(without the password) and reads as nothing too. On PostgreSQL they are blocking network I/O:
inside the bot, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from core.span_source import Fetch, SpanSource, SpansUnavailable, reader_of
from core.span_source import span_source as span_source  # the CLI's way to a source

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_HEX_REF = re.compile(r"[0-9a-f]{8,32}")
ALL_MODELS = "*"
# Attributes worth a glance in the tree; the rest stays available with --json.
_TREE_KEYS = ("chat.id", "user.id", "gen_ai.request.model", "gen_ai.response.model", "error.type",
              "http.response.status_code", "retry.attempt")
_TREE_SUFFIXES = (".size", ".bytes", "_bytes", ".tokens", "_tokens", ".count")
_MAX_VALUE_CHARS = 80
_TURN_MAX_NS = 3600 * 10**9  # no turn lasts longer: LLM timeouts and retries are bounded


class AmbiguousRef(ValueError):
    """A short ref matched more than one trace; `trace_ids` lists them (at most ten)."""

    def __init__(self, ref: str, trace_ids: list[str]) -> None:
        super().__init__(f"ref {ref} matches several traces, give more digits: {', '.join(trace_ids)}")
        self.trace_ids = trace_ids


@dataclass(frozen=True)
class SpanRow:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    start: str
    end: str
    duration_ms: float
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    status_message: str | None = None
    start_ns: int = 0


@dataclass(frozen=True)
class TurnRow:
    time: str
    chat_id: int | None
    status: str
    duration_ms: float
    ref: str
    trace_id: str


@dataclass(frozen=True)
class ModelScore:
    """LLM calls to one model, and the turns that called it; `model == ALL_MODELS` is every turn."""

    model: str
    llm_calls: int = 0
    llm_failures: int = 0
    llm_failure_rate: float = 0.0
    llm_p50_ms: float = 0.0
    llm_p95_ms: float = 0.0
    llm_p99_ms: float = 0.0
    turns: int = 0
    failed_turns: int = 0
    turn_p50_ms: float = 0.0
    turn_p95_ms: float = 0.0
    turn_p99_ms: float = 0.0


def iso_utc(ns: int) -> str:
    """ISO-8601 UTC with microseconds, built from integer ns so no float rounding creeps in."""
    at = datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=(ns % 1_000_000_000) // 1000)
    return at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _query(source: SpanSource, work: Callable[[Fetch, str], _T], *, empty: _T) -> _T:
    """`work(fetch, batch_order)` on the source's connection; `empty` when nothing is recorded
    yet, or when PostgreSQL cannot be reached (then said in one line in the log)."""
    reader = reader_of(source)
    try:
        with reader.read() as fetch:
            return empty if fetch is None else work(fetch, reader.batch_order)
    except SpansUnavailable as error:
        logger.warning("%s", error)
        return empty


def _span_row(trace_id: str, item: Sequence[Any]) -> SpanRow:
    span_id, parent, name, _kind, start_ns, end_ns, status, message, attributes, events = item
    return SpanRow(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                   start=iso_utc(start_ns), end=iso_utc(end_ns), duration_ms=(end_ns - start_ns) / 1e6,
                   status=status, attributes=attributes or {}, events=events or [], status_message=message,
                   start_ns=start_ns)


def find_trace(source: SpanSource, ref: str) -> list[SpanRow]:
    """The spans of the trace `ref` names (32 hex digits, or a prefix of 8 or more), by start time.

    Raises ValueError for anything but hex, AmbiguousRef when a prefix fits several traces;
    returns [] when nothing matches.
    """
    ref = ref.strip().lower()
    if not _HEX_REF.fullmatch(ref):
        shown = ref if len(ref) <= 40 else ref[:40] + "…"
        raise ValueError(f"a trace ref is 8 to 32 hex digits (0-9, a-f), like the 'ref: 1a2b3c4d' in a reply; "
                         f"got {shown!r}")

    def lookup(fetch: Fetch, batch_order: str) -> list[SpanRow]:
        # A range on the indexed column: every hex digit sorts before 'g'.
        matches = [r[0] for r in fetch(
            "SELECT DISTINCT trace_id FROM span_batches WHERE trace_id >= ? AND trace_id < ? LIMIT 10",
            [ref, ref + "g"])]
        if len(matches) > 1:
            raise AmbiguousRef(ref, sorted(matches))
        if not matches:
            return []
        batches = fetch(f"SELECT spans FROM span_batches WHERE trace_id = ? ORDER BY {batch_order}", [matches[0]])
        rows = [_span_row(matches[0], item) for (text,) in batches for item in json.loads(text)]
        return sorted(rows, key=lambda row: row.start_ns)  # stable: ties keep the order they were stored in

    return _query(source, lookup, empty=[])


def _shown_attributes(attributes: dict[str, Any]) -> str:
    picked = [(k, v) for k, v in attributes.items()
              if k in _TREE_KEYS or k.startswith("gen_ai.usage.") or k.endswith(_TREE_SUFFIXES)]
    return "  ".join(f"{key}={_value(value)}" for key, value in picked)


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS] + "…"
    return json.dumps(text, ensure_ascii=False) if (not text or " " in text or "\n" in text) else text


def format_tree(spans: list[SpanRow]) -> str:
    """An indented tree, children under parents by start time; spans whose parent is missing
    (pruned, or still unexported) are shown as roots so nothing is hidden."""
    ids = {span.span_id for span in spans}
    children: dict[str | None, list[SpanRow]] = {}
    for span in sorted(spans, key=lambda s: (s.start_ns, s.start)):
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in children.get(parent, []):
            line = f"{'  ' * depth}{span.name}  {span.duration_ms:.1f} ms  {span.status}"
            if span.status_message:
                line += f"  {_value(span.status_message)}"
            shown = _shown_attributes(span.attributes)
            lines.append(f"{line}  {shown}" if shown else line)
            for event in span.events:
                offset_ms = (int(event.get("time_ns") or span.start_ns) - span.start_ns) / 1e6
                attrs = "  ".join(f"{k}={_value(v)}" for k, v in (event.get("attributes") or {}).items()
                                  if k != "exception.stacktrace")
                lines.append(f"{'  ' * (depth + 1)}· {event.get('name')}  +{offset_ms:.1f} ms  {attrs}".rstrip())
            if span.span_id != parent:  # a span naming itself as parent must not loop forever
                walk(span.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def spans_json_lines(spans: list[SpanRow]) -> list[str]:
    """One JSON object per span with exactly the keys of the `trace --json` contract (DESIGN.md)."""
    return [json.dumps({"trace_id": s.trace_id, "span_id": s.span_id, "parent_span_id": s.parent_span_id,
                        "name": s.name, "start": s.start, "end": s.end, "status": s.status,
                        "attributes": s.attributes}, ensure_ascii=False) for s in spans]


def recent_turns(source: SpanSource, *, last: int = 20) -> list[TurnRow]:
    """The latest root `turn` spans, newest first."""
    rows = _query(source, lambda fetch, _order: fetch(
        "SELECT trace_id, root_start_ns, root_end_ns, root_status, chat_id FROM span_batches "
        "WHERE root_name = 'turn' ORDER BY root_start_ns DESC LIMIT ?", [max(0, last)]), empty=[])
    return [TurnRow(time=iso_utc(start_ns), chat_id=chat_id, status=status, duration_ms=(end_ns - start_ns) / 1e6,
                    ref=trace_id[:8], trace_id=trace_id) for trace_id, start_ns, end_ns, status, chat_id in rows]


def format_turns(rows: list[TurnRow]) -> str:
    """A small fixed-width table for the CLI and `/status`."""
    if not rows:
        return "no turns recorded yet"
    lines = [f"{'time (UTC)':<19}  {'chat':>14}  {'status':<6}  {'ms':>9}  ref"]
    for row in rows:
        chat = "-" if row.chat_id is None else str(row.chat_id)
        lines.append(f"{row.time[:19].replace('T', ' '):<19}  {chat:>14}  {row.status:<6}  "
                     f"{row.duration_ms:>9.1f}  {row.ref}")
    return "\n".join(lines)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least pct% of values at or below it.

    Always a value that was observed (no interpolation), which is what an operator expects
    from "p95 = 2.1 s"; 0.0 for no values.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def _score(model: str, calls: list[tuple[float, bool]], turns: list[tuple[float, bool]]) -> ModelScore:
    call_ms = [ms for ms, _ in calls]
    turn_ms = [ms for ms, _ in turns]
    failures = sum(failed for _, failed in calls)
    return ModelScore(
        model=model, llm_calls=len(calls), llm_failures=failures,
        llm_failure_rate=failures / len(calls) if calls else 0.0,
        llm_p50_ms=percentile(call_ms, 50), llm_p95_ms=percentile(call_ms, 95), llm_p99_ms=percentile(call_ms, 99),
        turns=len(turns), failed_turns=sum(failed for _, failed in turns),
        turn_p50_ms=percentile(turn_ms, 50), turn_p95_ms=percentile(turn_ms, 95), turn_p99_ms=percentile(turn_ms, 99))


def scoreboard(source: SpanSource, *, since_ns: int, now_ns: int) -> list[ModelScore]:
    """Per-model LLM reliability and latency for spans started in [since_ns, now_ns).

    The first row (model `ALL_MODELS`) covers every call and every turn, including turns that
    never reached the LLM; then one row per model, sorted by name, whose turn figures count
    the turns that called it (a turn that called two models counts for both). [] when
    nothing was recorded in the window; never raises.
    """
    def window(fetch: Fetch, _order: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        # A batch starts no later than the calls it holds, and no earlier than their turn.
        batches = fetch("SELECT trace_id, llm_calls FROM span_batches WHERE start_ns >= ? AND start_ns < ? "
                        "AND llm_calls IS NOT NULL", [since_ns - _TURN_MAX_NS, now_ns])
        turn_rows = fetch("SELECT trace_id, root_end_ns - root_start_ns, root_status FROM span_batches "
                          "WHERE root_name = 'turn' AND root_start_ns >= ? AND root_start_ns < ?", [since_ns, now_ns])
        return batches, turn_rows

    try:
        batches, turn_rows = _query(source, window, empty=([], []))
    except sqlite3.Error:
        return []
    llm_rows = [(trace_id, model, duration_ns, status) for trace_id, calls in batches
                for model, start_ns, duration_ns, status in json.loads(calls) if since_ns <= start_ns < now_ns]
    if not llm_rows and not turn_rows:
        return []
    calls: dict[str, list[tuple[float, bool]]] = {}
    models_of_trace: dict[str, set[str]] = {}
    for trace_id, model, duration_ns, status in llm_rows:
        calls.setdefault(str(model), []).append((duration_ns / 1e6, status == "ERROR"))
        models_of_trace.setdefault(trace_id, set()).add(str(model))
    turns_of: dict[str, list[tuple[float, bool]]] = {}
    all_turns = []
    for trace_id, duration_ns, status in turn_rows:
        turn = (duration_ns / 1e6, status == "ERROR")
        all_turns.append(turn)
        for model in models_of_trace.get(trace_id, ()):
            turns_of.setdefault(model, []).append(turn)
    all_calls = [call for model_calls in calls.values() for call in model_calls]
    return [_score(ALL_MODELS, all_calls, all_turns)] + [
        _score(model, calls[model], turns_of.get(model, [])) for model in sorted(calls)]


def format_scoreboard(scores: list[ModelScore]) -> str:
    """A fixed-width table of `scoreboard` rows for the CLI and `/status`."""
    if not scores:
        return "no traffic in this period"
    lines = [f"{'model':<24} {'calls':>6} {'fail%':>6} {'p50':>8} {'p95':>8} {'p99':>8} "
             f"{'turns':>6} {'failed':>6} {'turn p95':>9}"]
    for s in scores:
        lines.append(f"{s.model[:24]:<24} {s.llm_calls:>6} {s.llm_failure_rate * 100:>5.1f}% {s.llm_p50_ms:>8.0f} "
                     f"{s.llm_p95_ms:>8.0f} {s.llm_p99_ms:>8.0f} {s.turns:>6} {s.failed_turns:>6} "
                     f"{s.turn_p95_ms:>9.0f}")
    return "\n".join(lines)
