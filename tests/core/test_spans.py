"""SDK spans through our processor (core/span_processor.py) into the batched store (core/span_store.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import sqlite_utils
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

from core.logs import redactor
from core.span_processor import RecordBatchProcessor
from core.span_schema import m001_spans, migrations
from core.span_store import MAX_ATTRIBUTE_CHARS, SpanRecord, record_of
from core.span_store_sqlite import SQLiteSpanExporter
from core.telemetry import find_trace, recent_turns, scoreboard
from core.tracing import _RedactingExporter, current_trace_id, new_turn_span, setup_tracing


class Sink:
    """A record exporter that keeps what it gets; `fail` makes it raise."""

    def __init__(self) -> None:
        self.batches: list[list[SpanRecord]] = []
        self.fail = False
        self.shut_down = False

    def export_records(self, records: Sequence[SpanRecord]) -> SpanExportResult:
        if self.fail:
            raise RuntimeError("exporter broke")
        self.batches.append(list(records))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut_down = True

    @property
    def names(self) -> list[str]:
        return [record[3] for batch in self.batches for record in batch]


def make_tracer(sink: Sink | SQLiteSpanExporter, *, sampler: sampling.Sampler | None = None,
                **options: float) -> tuple[Tracer, RecordBatchProcessor, TracerProvider]:
    provider = TracerProvider(sampler=sampler or sampling.ALWAYS_ON, resource=Resource.create({}),
                              shutdown_on_exit=False)
    processor = RecordBatchProcessor(sink, **{"delay_s": 30, **options})  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    return provider.get_tracer("test"), processor, provider


# The processor ---------------------------------------------------------------------------------
def test_ended_spans_become_records_the_garbage_collector_need_not_follow() -> None:
    sink = Sink()
    tracer, processor, provider = make_tracer(sink)
    with new_turn_span(tracer, attributes={"chat.id": 7}):
        with tracer.start_as_current_span("stage") as stage:
            stage.set_attributes({"a": 1, "b": ["x", "y"]})
            stage.add_event("retry", {"retry.attempt": 1})
            trace_id = current_trace_id()
    processor.force_flush()
    (stage_record, root_record), = sink.batches
    gc.collect()
    # One tuple per span and nothing inside it for the collector to follow, unless the span has
    # events (rare: retries, exceptions); an SDK ReadableSpan would be a dozen tracked objects.
    assert not any(gc.is_tracked(item) for item in root_record)
    assert gc.is_tracked(stage_record[10])
    assert stage_record[0] == root_record[0] == int(trace_id or "0", 16)
    assert stage_record[2] == root_record[1] and root_record[2] is None
    assert stage_record[3] == "stage" and stage_record[9] == {"a": 1, "b": ("x", "y")}
    assert type(stage_record[9]) is dict and root_record[9] == {"chat.id": 7}
    assert [event.name for event in stage_record[10]] == ["retry"]
    assert root_record[5] <= stage_record[5] <= stage_record[6] <= root_record[6]
    assert (root_record[4], root_record[7]) == ("INTERNAL", "UNSET")
    provider.shutdown()
    assert sink.shut_down


def test_unsampled_spans_are_not_queued_but_keep_their_ids() -> None:
    sink = Sink()
    tracer, processor, provider = make_tracer(sink, sampler=sampling.ALWAYS_OFF)
    with new_turn_span(tracer) as root:
        assert not root.is_recording() and current_trace_id() is not None
    processor.force_flush()
    assert sink.batches == [] and processor.dropped == 0
    provider.shutdown()


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    sink = Sink()
    tracer, processor, provider = make_tracer(sink, max_queue=5, max_batch=2)
    for i in range(8):
        tracer.start_span(f"s{i}").end()
    assert processor.dropped == 3
    processor.force_flush()
    assert [len(b) for b in sink.batches] == [2, 2, 1]
    provider.shutdown()


def test_a_full_batch_wakes_the_thread_before_the_delay() -> None:
    sink = Sink()
    tracer, _, provider = make_tracer(sink, max_batch=3)  # delay 30 s: only a full batch exports now
    for i in range(3):
        tracer.start_span(f"s{i}").end()
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.names == ["s0", "s1", "s2"]
    provider.shutdown()


def test_a_failing_exporter_does_not_stop_the_thread() -> None:
    sink = Sink()
    tracer, processor, provider = make_tracer(sink, delay_s=0.01)
    sink.fail = True
    tracer.start_span("lost").end()
    time.sleep(0.1)
    sink.fail = False
    tracer.start_span("kept").end()
    deadline = time.monotonic() + 5
    while not sink.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.names == ["kept"]
    provider.shutdown()
    assert not processor._thread.is_alive()


def test_exceptions_mark_errors_but_cancellation_does_not(tmp_path: Path) -> None:
    telemetry = setup_tracing(data_dir=tmp_path)  # the tracer the bot uses, with its own context manager
    tracer = telemetry.tracer
    with pytest.raises(ValueError), new_turn_span(tracer):
        trace_id = current_trace_id() or ""
        with pytest.raises(asyncio.CancelledError), tracer.start_as_current_span("cancelled"):
            raise asyncio.CancelledError
        with pytest.raises(KeyError), tracer.start_as_current_span("quiet", record_exception=False,
                                                                  set_status_on_exception=False):
            raise KeyError("x")
        with tracer.start_as_current_span("ok") as span:
            span.set_status(Status(StatusCode.OK))
            span.set_status(StatusCode.ERROR, "too late")  # OK is final
        kept_open = tracer.start_as_current_span("kept open", end_on_exit=False)
        with kept_open as open_span:
            pass
        assert open_span.is_recording()
        open_span.end()
        with tracer.start_as_current_span("fails"):
            raise ValueError("bad input")  # recorded here, and by the turn it escapes from
    telemetry.force_flush()
    spans = {span.name: span for span in find_trace(telemetry.db_path, trace_id)}
    for name in ("fails", "turn"):
        assert spans[name].status == "ERROR" and spans[name].status_message == "ValueError: bad input"
        event = spans[name].events[0]
        assert event["name"] == "exception" and event["attributes"]["exception.type"] == "ValueError"
        assert "bad input" in event["attributes"]["exception.stacktrace"]
    assert spans["cancelled"].status == "UNSET" and not spans["cancelled"].events
    assert spans["quiet"].status == "UNSET" and not spans["quiet"].events
    assert spans["ok"].status == "OK" and spans["kept open"].status == "UNSET"
    assert current_trace_id() is None  # every block restored the context it found
    telemetry.shutdown()


async def test_tasks_inherit_the_turn() -> None:
    sink = Sink()
    tracer, processor, provider = make_tracer(sink)

    async def child() -> str | None:
        with tracer.start_as_current_span("in task"):
            await asyncio.sleep(0)
            return current_trace_id()

    with new_turn_span(tracer):
        assert await asyncio.create_task(child()) == current_trace_id()
    processor.force_flush()
    (task_span, root), = sink.batches
    assert task_span[2] == root[1] and task_span[0] == root[0]
    provider.shutdown()


# The store ---------------------------------------------------------------------------------------
def record_turn(tracer: Tracer, *, chat_id: int = 5, model: str = "gpt-x") -> str:
    with new_turn_span(tracer, attributes={"chat.id": chat_id}):
        trace_id = current_trace_id() or ""
        with tracer.start_as_current_span("llm"), tracer.start_as_current_span(
                f"chat {model}", attributes={"gen_ai.request.model": model}):
            pass
    return trace_id


def test_a_turn_split_over_batches_reads_back_whole(tmp_path: Path) -> None:
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db")
    sink = Sink()
    tracer, processor, provider = make_tracer(sink)
    trace_id = record_turn(tracer)
    processor.force_flush()
    (records,) = sink.batches
    assert exporter.export_records(records[:1]) is SpanExportResult.SUCCESS  # the model call, alone
    assert exporter.export_records(records[1:]) is SpanExportResult.SUCCESS  # the rest, root last
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
    provider.shutdown()
    exporter.shutdown()


def test_the_sdk_exporter_interface_stores_the_same_rows(tmp_path: Path) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace_id = record_turn(provider.get_tracer("test"))
    spans: tuple[ReadableSpan, ...] = memory.get_finished_spans()
    by_export, by_records = SQLiteSpanExporter(tmp_path / "a.db"), SQLiteSpanExporter(tmp_path / "b.db")
    assert by_export.export(spans) is SpanExportResult.SUCCESS
    assert by_records.export_records([record_of(span) for span in spans]) is SpanExportResult.SUCCESS
    assert find_trace(by_export.db_path, trace_id) == find_trace(by_records.db_path, trace_id)
    assert len(find_trace(by_export.db_path, trace_id)) == 3
    provider.shutdown()


def test_values_are_redacted_and_cut_whatever_their_form(tmp_path: Path) -> None:
    secret = 'sk-"quoted"-secret'
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db", redact=redactor([secret]))
    tracer, processor, provider = make_tracer(exporter)
    with new_turn_span(tracer, attributes={"key": f"uses {secret}", "long": "y" * (MAX_ATTRIBUTE_CHARS + 10),
                                           "items": ["z" * (MAX_ATTRIBUTE_CHARS + 1)]}) as root:
        trace_id = current_trace_id() or ""
        root.add_event(f"event {secret}", {"detail": secret})
        root.set_status(StatusCode.ERROR, f"failed with {secret}")
    with new_turn_span(tracer, attributes={"plain": "nothing to hide"}):
        plain_id = current_trace_id() or ""
    provider.shutdown()
    with sqlite3.connect(exporter.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "quoted" not in dump and "[REDACTED]" in dump
    (root,) = find_trace(exporter.db_path, trace_id)
    assert root.attributes["key"] == "uses [REDACTED]" and len(root.attributes["long"]) == MAX_ATTRIBUTE_CHARS
    assert len(root.attributes["items"][0]) == MAX_ATTRIBUTE_CHARS
    assert root.events[0]["name"] == "event [REDACTED]" and root.status_message == "failed with [REDACTED]"
    assert find_trace(exporter.db_path, plain_id)[0].attributes == {"plain": "nothing to hide"}


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


def test_sdk_spans_go_over_otlp_redacted() -> None:
    sink = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ALWAYS_ON, resource=Resource.create({"service.name": "gw"}),
                              shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(_RedactingExporter(sink, redactor(["sk-secret-key"]))))
    tracer = provider.get_tracer("test")
    with new_turn_span(tracer, attributes={"url": "https://x/?key=sk-secret-key"}) as root:
        root.add_event("retry", {"why": "sk-secret-key"})
    (sent,) = sink.get_finished_spans()
    assert sent.name == "turn" and sent.attributes == {"url": "https://x/?key=[REDACTED]"}
    assert sent.events[0].attributes == {"why": "[REDACTED]"} and sent.resource.attributes["service.name"] == "gw"
    assert sent.context.trace_id == root.get_span_context().trace_id
    provider.shutdown()
