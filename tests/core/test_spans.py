"""The lean tracer (core/spans.py) and the batched span store (core/span_store.py)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
import sqlite_utils
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode

from core.logs import redactor
from core.span_store import MAX_ATTRIBUTE_CHARS, SQLiteSpanExporter, m001_spans, migrations
from core.spans import ExportQueue, Span, Tracer
from core.telemetry import find_trace, recent_turns, scoreboard
from core.tracing import current_trace_id, new_turn_span, traceparent_headers

SCOPE = InstrumentationScope("test")


class Sink:
    """An exporter that keeps what it gets; `fail` makes it raise."""

    def __init__(self) -> None:
        self.batches: list[list[Span]] = []
        self.fail = False
        self.shut_down = False

    def export(self, spans):  # noqa: ANN001, ANN201
        if self.fail:
            raise RuntimeError("exporter broke")
        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True

    @property
    def spans(self) -> list[Span]:
        return [span for batch in self.batches for span in batch]


def make_tracer(sink: Sink | None = None, **queue_options: object) -> tuple[Tracer, ExportQueue | None]:
    queue = ExportQueue(sink, delay_s=30, **queue_options) if sink is not None else None  # type: ignore[arg-type]
    return Tracer([queue] if queue else [], resource=Resource.create({}), scope=SCOPE), queue


# Spans ----------------------------------------------------------------------------------------
def test_spans_nest_record_and_end_once() -> None:
    sink = Sink()
    tracer, queue = make_tracer(sink)
    with new_turn_span(tracer, attributes={"chat.id": 7, "skipped": None}) as root:
        with tracer.start_as_current_span("stage") as stage:
            trace.get_current_span().set_attributes({"a": 1, "b": ["x", "y"]})
            stage.add_event("retry", {"retry.attempt": 1})
            assert current_trace_id() == format(root.get_span_context().trace_id, "032x")
    root.end()  # a second end is ignored
    root.set_attribute("late", True)  # so are writes after the end
    queue.shutdown()
    assert sink.shut_down and [s.name for s in sink.spans] == ["stage", "turn"]
    stage, root = sink.spans
    assert stage.parent == root.context and root.parent is None
    assert stage.context.trace_id == root.context.trace_id and stage.context.trace_flags.sampled
    assert root.attributes == {"chat.id": 7} and stage.attributes == {"a": 1, "b": ["x", "y"]}
    assert [e.name for e in stage.events] == ["retry"] and stage.events[0].attributes == {"retry.attempt": 1}
    assert root.start_time <= stage.start_time <= stage.end_time <= root.end_time
    assert root.resource is not None and root.instrumentation_scope is SCOPE


def test_exceptions_mark_errors_but_cancellation_does_not() -> None:
    sink = Sink()
    tracer, queue = make_tracer(sink)
    with pytest.raises(ValueError), tracer.start_as_current_span("fails"):
        raise ValueError("bad input")
    with pytest.raises(asyncio.CancelledError), tracer.start_as_current_span("cancelled"):
        raise asyncio.CancelledError
    with pytest.raises(KeyError), tracer.start_as_current_span("quiet", record_exception=False,
                                                              set_status_on_exception=False):
        raise KeyError("x")
    with tracer.start_as_current_span("ok") as span:
        span.set_status(Status(StatusCode.OK))
        span.set_status(StatusCode.ERROR, "too late")  # OK is final
    queue.flush()
    fails, cancelled, quiet, ok = sink.spans
    assert fails.status.status_code is StatusCode.ERROR and fails.status.description == "ValueError: bad input"
    event = fails.events[0]
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert "bad input" in event.attributes["exception.stacktrace"]
    assert cancelled.status.status_code is StatusCode.UNSET and not cancelled.events
    assert quiet.status.status_code is StatusCode.UNSET and not quiet.events
    assert ok.status.status_code is StatusCode.OK
    queue.shutdown()


def test_attribute_and_event_limits() -> None:
    sink = Sink()
    tracer, queue = make_tracer(sink)
    with tracer.start_as_current_span("big") as span:
        span.set_attributes({f"k{i}": i for i in range(200)})
        for i in range(200):
            span.add_event(f"e{i}")
    queue.flush()
    (big,) = sink.spans
    assert len(big.attributes) == 128 and len(big.events) == 128
    queue.shutdown()


def test_an_unrecording_tracer_still_gives_ids() -> None:
    tracer, _ = make_tracer(None)
    with new_turn_span(tracer) as root:
        assert not root.is_recording()
        assert current_trace_id() is not None
        header = traceparent_headers()["traceparent"]
        assert header.split("-")[1] == current_trace_id() and header.endswith("-00")
        with tracer.start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == root.get_span_context().trace_id


async def test_tasks_inherit_the_turn() -> None:
    sink = Sink()
    tracer, queue = make_tracer(sink)

    async def child() -> str | None:
        with tracer.start_as_current_span("in task"):
            await asyncio.sleep(0)
            return current_trace_id()

    with new_turn_span(tracer):
        assert await asyncio.create_task(child()) == current_trace_id()
    queue.flush()
    task_span, root = sink.spans
    assert task_span.parent == root.context
    queue.shutdown()


# The export queue ---------------------------------------------------------------------------------
def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink = Sink()
    tracer, queue = make_tracer(sink, max_queue=5, max_batch=2)
    for i in range(8):
        tracer.start_span(f"s{i}").end()
    assert queue.dropped == 3
    queue.flush()
    assert [len(b) for b in sink.batches] == [2, 2, 1]
    queue.shutdown()


def test_a_failing_exporter_does_not_stop_the_thread() -> None:
    sink = Sink()
    queue = ExportQueue(sink, delay_s=0.01)  # type: ignore[arg-type]
    tracer = Tracer([queue], resource=Resource.create({}), scope=SCOPE)
    sink.fail = True
    tracer.start_span("lost").end()
    time.sleep(0.1)
    sink.fail = False
    tracer.start_span("kept").end()
    deadline = time.monotonic() + 5
    while not sink.spans and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [s.name for s in sink.spans] == ["kept"]
    queue.shutdown()
    assert not queue._thread.is_alive()


# The store ---------------------------------------------------------------------------------------
def record_turn(tracer: Tracer, *, chat_id: int = 5, model: str = "gpt-x", fail: bool = False) -> str:
    with new_turn_span(tracer, attributes={"chat.id": chat_id}) as root:
        trace_id = current_trace_id() or ""
        with tracer.start_as_current_span("llm"), tracer.start_as_current_span(
                f"chat {model}", attributes={"gen_ai.request.model": model}) as call:
            if fail:
                call.set_status(StatusCode.ERROR, "boom")
        if fail:
            root.set_status(StatusCode.ERROR, "failed")
    return trace_id


def test_a_turn_split_over_batches_reads_back_whole(tmp_path: Path) -> None:
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db")
    sink = Sink()
    tracer, queue = make_tracer(sink)
    trace_id = record_turn(tracer)
    queue.flush()
    spans = sink.spans
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS  # the model call, alone
    assert exporter.export(spans[1:]) is SpanExportResult.SUCCESS  # the rest, root last
    found = find_trace(exporter.db_path, trace_id[:8])
    assert [s.name for s in found] == ["turn", "llm", "chat gpt-x"]
    assert found[0].attributes == {"chat.id": 5} and found[2].parent_span_id == found[1].span_id
    (turn,) = recent_turns(exporter.db_path)
    assert turn.trace_id == trace_id and turn.chat_id == 5
    total, model = scoreboard(exporter.db_path, since_ns=0, now_ns=time.time_ns() + 1)
    assert (model.model, model.llm_calls, model.turns) == ("gpt-x", 1, 1)
    with sqlite3.connect(exporter.db_path) as conn:  # the views for people browsing the file
        assert conn.execute("SELECT count(*) FROM spans WHERE trace_id = ?", [trace_id]).fetchone()[0] == 3
        assert conn.execute("SELECT ref, chat_id FROM turns").fetchall() == [(trace_id[:8], 5)]
    queue.shutdown()
    exporter.shutdown()


def test_values_are_redacted_and_cut_whatever_their_form(tmp_path: Path) -> None:
    secret = 'sk-"quoted"-secret'
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db", redact=redactor([secret]))
    sink = Sink()
    tracer, queue = make_tracer(sink)
    with new_turn_span(tracer, attributes={"key": f"uses {secret}", "long": "y" * (MAX_ATTRIBUTE_CHARS + 10),
                                           "items": ["z" * (MAX_ATTRIBUTE_CHARS + 1)]}) as root:
        trace_id = current_trace_id() or ""
        root.add_event(f"event {secret}", {"detail": secret})
        root.set_status(StatusCode.ERROR, f"failed with {secret}")
    with new_turn_span(tracer, attributes={"plain": "nothing to hide"}):
        plain_id = current_trace_id() or ""
    queue.flush()
    exporter.export(sink.spans)
    with sqlite3.connect(exporter.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "quoted" not in dump and "[REDACTED]" in dump
    (root,) = find_trace(exporter.db_path, trace_id)
    assert root.attributes["key"] == "uses [REDACTED]" and len(root.attributes["long"]) == MAX_ATTRIBUTE_CHARS
    assert len(root.attributes["items"][0]) == MAX_ATTRIBUTE_CHARS
    assert root.events[0]["name"] == "event [REDACTED]" and root.status_message == "failed with [REDACTED]"
    assert find_trace(exporter.db_path, plain_id)[0].attributes == {"plain": "nothing to hide"}
    queue.shutdown()
    exporter.shutdown()


def test_spans_stored_one_per_row_are_migrated(tmp_path: Path) -> None:
    path = tmp_path / "telemetry.db"
    db = sqlite_utils.Database(path)
    m001_spans(db)
    db.execute("CREATE TABLE _sqlite_migrations (migration_set TEXT, name TEXT, applied_at TEXT)")
    db.execute("INSERT INTO _sqlite_migrations VALUES ('telemetry', 'm001_spans', '2026-01-01')")
    trace_id = "ab" * 16
    start = time.time_ns()
    rows = [(trace_id, "1" * 16, None, "turn", "INTERNAL", start, start + 9_000_000, "ERROR", "failed",
             json.dumps({"chat.id": 42}), "[]"),
            (trace_id, "2" * 16, "1" * 16, "chat m", "CLIENT", start + 1, start + 5_000_000, "UNSET", None,
             json.dumps({"gen_ai.request.model": "m"}), json.dumps([{"name": "retry", "time_ns": start + 2,
                                                                      "attributes": {"retry.attempt": 1}}]))]
    db.conn.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.conn.commit()
    migrations.apply(db)
    db.close()
    spans = find_trace(path, trace_id[:8])
    assert [(s.name, s.parent_span_id, s.status) for s in spans] == [("turn", None, "ERROR"),
                                                                    ("chat m", "1" * 16, "UNSET")]
    assert spans[0].attributes == {"chat.id": 42} and spans[1].events[0]["name"] == "retry"
    assert recent_turns(path)[0].chat_id == 42
    (total, model) = scoreboard(path, since_ns=start - 1, now_ns=start + 10**10)
    assert (model.model, model.llm_calls, model.turns, model.failed_turns) == ("m", 1, 1, 1)


def test_our_spans_go_over_otlp_as_sdk_spans_redacted() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from core.tracing import _RedactingExporter

    sink = InMemorySpanExporter()
    queue = ExportQueue(_RedactingExporter(sink, redactor(["sk-secret-key"])), delay_s=30)
    tracer = Tracer([queue], resource=Resource.create({"service.name": "gw"}), scope=SCOPE)
    with new_turn_span(tracer, attributes={"url": "https://x/?key=sk-secret-key"}) as root:
        root.add_event("retry", {"why": "sk-secret-key"})
    queue.flush()
    (sent,) = sink.get_finished_spans()
    assert sent.name == "turn" and sent.attributes == {"url": "https://x/?key=[REDACTED]"}
    assert sent.events[0].attributes == {"why": "[REDACTED]"} and sent.resource.attributes["service.name"] == "gw"
    assert sent.context.trace_id == root.get_span_context().trace_id and sent.instrumentation_scope is SCOPE
    queue.shutdown()
