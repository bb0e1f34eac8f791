"""Tracing: one trace per turn, spans stored in SQLite, looked up by ref, pruned, scored."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from core.logs import redactor
from core.telemetry import (
    ALL_MODELS,
    AmbiguousRef,
    find_trace,
    format_scoreboard,
    format_tree,
    format_turns,
    percentile,
    recent_turns,
    scoreboard,
    spans_json_lines,
)
from core.tracing import (
    SQLiteSpanExporter,
    Telemetry,
    _RedactingExporter,
    current_trace_id,
    new_turn_span,
    setup_tracing,
    short_ref,
    traceparent_headers,
)

DAY_NS = 86_400 * 1_000_000_000
NOW_NS = time.time_ns()


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[Telemetry]:
    built = setup_tracing(data_dir=tmp_path, export_delay_ms=50)
    yield built
    built.shutdown()


def make_span(trace_id: int, span_id: int, name: str, start_ns: int, duration_ms: float = 1.0, *,
              parent: int | None = None, status: StatusCode = StatusCode.UNSET,
              attributes: dict | None = None) -> ReadableSpan:
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(name=name, context=context,
                        parent=SpanContext(trace_id, parent, is_remote=False) if parent else None,
                        attributes=attributes or {}, start_time=start_ns, end_time=start_ns + int(duration_ms * 1e6),
                        status=Status(status))


def span_count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM spans").fetchone()[0]


def stored_bytes(db_path: Path) -> int:
    """Database size including pages still in the WAL (the main file lags until a checkpoint)."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]


# Turn context -------------------------------------------------------------------------------
async def test_span_tree_round_trips_through_sqlite(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer
    with new_turn_span(tracer, attributes={"chat.id": 42, "user.id": 7}):
        trace_id = current_trace_id()
        with tracer.start_as_current_span("context", attributes={"prompt.tokens": 120}):
            pass
        with tracer.start_as_current_span("chat gpt-x", attributes={
                "gen_ai.request.model": "gpt-x", "gen_ai.usage.input_tokens": 10, "ignored.key": "x"}) as llm:
            llm.add_event("retry", {"retry.attempt": 1})
    assert telemetry.force_flush()
    assert trace_id is not None and len(trace_id) == 32

    spans = find_trace(telemetry.db_path, trace_id)
    assert [s.name for s in spans] == ["turn", "context", "chat gpt-x"]
    root = spans[0]
    assert root.parent_span_id is None and root.attributes == {"chat.id": 42, "user.id": 7}
    assert all(s.parent_span_id == root.span_id for s in spans[1:])
    assert spans[2].events[0]["name"] == "retry"
    assert root.start.endswith("Z") and root.duration_ms >= 0

    tree = format_tree(spans).splitlines()
    assert tree[0].startswith("turn  ") and "chat.id=42" in tree[0]
    assert tree[1].startswith("  context  ") and "prompt.tokens=120" in tree[1]
    assert tree[2].startswith("  chat gpt-x  ") and "gen_ai.usage.input_tokens=10" in tree[2]
    assert "ignored.key" not in tree[2]
    assert tree[3].strip().startswith("· retry")

    assert find_trace(telemetry.db_path, short_ref(trace_id)) == spans
    assert find_trace(telemetry.db_path, short_ref(trace_id).upper()) == spans


async def test_json_lines_have_exactly_the_contract_keys(telemetry: Telemetry) -> None:
    with new_turn_span(telemetry.tracer):
        trace_id = current_trace_id()
        with telemetry.tracer.start_as_current_span("child"):
            pass
    telemetry.force_flush()
    lines = spans_json_lines(find_trace(telemetry.db_path, trace_id or ""))
    assert len(lines) == 2
    for line in lines:
        assert set(json.loads(line)) == {"trace_id", "span_id", "parent_span_id", "name", "start", "end",
                                         "status", "attributes"}


async def test_concurrent_turns_never_mix_and_child_tasks_inherit(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer

    async def turn(label: str) -> str | None:
        with new_turn_span(tracer, attributes={"label": label}):
            for step in range(3):
                with tracer.start_as_current_span(f"{label}-step{step}"):
                    await asyncio.sleep(0.001)

            async def child() -> str | None:
                with tracer.start_as_current_span(f"{label}-task"):
                    await asyncio.sleep(0)
                    return current_trace_id()

            child_trace = await asyncio.create_task(child())
            assert child_trace == current_trace_id()
            return current_trace_id()

    first, second = await asyncio.gather(turn("a"), turn("b"))
    assert first and second and first != second
    assert current_trace_id() is None
    telemetry.force_flush()
    for trace_id, label in ((first, "a"), (second, "b")):
        names = {s.name for s in find_trace(telemetry.db_path, trace_id)}
        assert names == {"turn", f"{label}-step0", f"{label}-step1", f"{label}-step2", f"{label}-task"}


def test_turn_span_is_a_root_even_inside_another_span(telemetry: Telemetry) -> None:
    with telemetry.tracer.start_as_current_span("outer"):
        outer = current_trace_id()
        with new_turn_span(telemetry.tracer):
            inner = current_trace_id()
        assert current_trace_id() == outer
    assert inner != outer


def test_traceparent_carries_the_current_trace_id(telemetry: Telemetry) -> None:
    assert traceparent_headers() == {}
    with new_turn_span(telemetry.tracer):
        header = traceparent_headers()["traceparent"]
        assert header.split("-")[1] == current_trace_id()


def test_disabled_tracing_still_gives_ids_but_stores_nothing(tmp_path: Path) -> None:
    telemetry = setup_tracing(data_dir=tmp_path, enabled=False)
    with new_turn_span(telemetry.tracer) as span:
        assert not span.is_recording()
        trace_id = current_trace_id()
        assert trace_id and trace_id in traceparent_headers()["traceparent"]
    telemetry.force_flush()
    telemetry.shutdown()
    assert not telemetry.db_path.exists()


def test_otel_sdk_disabled_keeps_refs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = setup_tracing(data_dir=tmp_path)
    with new_turn_span(telemetry.tracer):
        assert current_trace_id() is not None
    assert not telemetry.enabled
    telemetry.shutdown()


@pytest.mark.parametrize("sampler, arg", [("always_off", None), ("traceidratio", "0"),
                                          ("parentbased_traceidratio", "0")])
def test_a_turn_the_sampler_drops_still_has_a_ref_and_traceparent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sampler: str, arg: str | None) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    if arg is not None:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    telemetry = setup_tracing(data_dir=tmp_path, export_delay_ms=50)
    with new_turn_span(telemetry.tracer) as root:
        assert not root.is_recording()
        trace_id = current_trace_id()
        with telemetry.tracer.start_as_current_span("child"):
            assert current_trace_id() == trace_id
        header = traceparent_headers()["traceparent"]
    assert trace_id is not None and len(trace_id) == 32 and int(trace_id, 16) != 0
    assert len(short_ref(trace_id)) == 8
    version, header_trace, span_id, flags = header.split("-")
    assert (version, header_trace) == ("00", trace_id) and int(span_id, 16) != 0
    assert int(flags, 16) & 1 == 0  # the W3C "sampled" bit is off: the LLM side need not record it either
    telemetry.force_flush()
    assert find_trace(telemetry.db_path, trace_id) == []  # not sampled: not stored
    telemetry.shutdown()


def test_service_name_is_ours_unless_otel_service_name_says_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = setup_tracing(data_dir=tmp_path, service_version="9.9")
    assert default.provider is not None
    attributes = default.provider.resource.attributes
    assert (attributes["service.name"], attributes["service.version"]) == ("telegram-llm-gateway", "9.9")
    default.shutdown()
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging,service.name=from-attributes")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "family-bot")
    named = setup_tracing(data_dir=tmp_path)
    assert named.provider is not None
    named_attributes = named.provider.resource.attributes
    assert named_attributes["service.name"] == "family-bot" and named_attributes["deployment.environment"] == "staging"
    named.shutdown()


def test_exception_marks_the_turn_as_error(telemetry: Telemetry) -> None:
    with pytest.raises(RuntimeError), new_turn_span(telemetry.tracer):
        trace_id = current_trace_id()
        raise RuntimeError("boom")
    telemetry.force_flush()
    (root,) = find_trace(telemetry.db_path, trace_id or "")
    assert root.status == "ERROR" and root.events[0]["name"] == "exception"


def test_secrets_are_redacted_from_stored_spans(tmp_path: Path) -> None:
    telemetry = setup_tracing(data_dir=tmp_path, redact=redactor(["123:SECRET-token"]))
    with pytest.raises(ValueError), new_turn_span(telemetry.tracer, attributes={
            "url": "https://api.telegram.org/bot123:SECRET-token/getMe", "list": ("a", "123%3ASECRET-token")}):
        raise ValueError("failed calling /bot123:SECRET-token/sendMessage")
    telemetry.force_flush()
    telemetry.shutdown()
    with sqlite3.connect(telemetry.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "SECRET" not in dump and "[REDACTED]" in dump


def test_otlp_exporter_is_added_for_an_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    plain = setup_tracing(data_dir=tmp_path)
    assert plain.otlp_exporter is None
    plain.shutdown()
    explicit = setup_tracing(data_dir=tmp_path, otlp_endpoint="http://127.0.0.1:1/")
    assert explicit.otlp_exporter is not None
    assert explicit.otlp_exporter.inner._endpoint == "http://127.0.0.1:1/v1/traces"  # type: ignore[attr-defined]
    explicit.shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    from_env = setup_tracing(data_dir=tmp_path)
    assert from_env.otlp_exporter is not None
    from_env.shutdown()


class _Collector(ThreadingHTTPServer):
    """A local OTLP/HTTP receiver: keeps each request's path, headers and body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_spans_reach_an_otlp_collector_named_and_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    secret = "sk-live-0123456789abcdef"
    collector = _Collector()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "family-bot")
    telemetry = setup_tracing(data_dir=tmp_path, redact=redactor([secret]))
    try:
        with new_turn_span(telemetry.tracer, attributes={"chat.id": 42, "url": f"https://x/?key={secret}"}):
            trace_id = current_trace_id()
            with telemetry.tracer.start_as_current_span(f"chat {secret}"):
                pass
        telemetry.shutdown()  # flushes the OTLP processor too
    finally:
        collector.shutdown()
    ((path, headers, body),) = collector.requests
    assert path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
    assert secret.encode() not in body and b"[REDACTED]" in body
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
    assert resource["service.name"] == "family-bot"
    spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert sorted(span.name for span in spans) == ["chat [REDACTED]", "turn"]
    assert {span.trace_id.hex() for span in spans} == {trace_id}
    assert find_trace(telemetry.db_path, trace_id or "")  # and SQLite got them as well


def test_otlp_copies_are_redacted_too() -> None:
    sink = InMemorySpanExporter()
    exporter = _RedactingExporter(sink, redactor(["sk-very-secret"]))
    span = make_span(7, 7, "chat sk-very-secret", NOW_NS, status=StatusCode.ERROR,
                     attributes={"http.url": "https://x/?key=sk-very-secret", "n": 3})
    exporter.export([span])
    (sent,) = sink.get_finished_spans()
    assert sent.name == "chat [REDACTED]" and sent.attributes == {"http.url": "https://x/?key=[REDACTED]", "n": 3}
    assert sent.context.trace_id == 7 and sent.status.status_code is StatusCode.ERROR


# Ref lookup -----------------------------------------------------------------------------------
def test_ambiguous_prefix_and_bad_refs(tmp_path: Path) -> None:
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db")
    exporter.export([make_span(0xDEADBEEF << 96 | 1, 1, "turn", NOW_NS),
                     make_span(0xDEADBEEF << 96 | 2, 2, "turn", NOW_NS)])
    exporter.shutdown()
    with pytest.raises(AmbiguousRef) as info:
        find_trace(exporter.db_path, "deadbeef")
    assert len(info.value.trace_ids) == 2 and isinstance(info.value, ValueError)
    assert len(find_trace(exporter.db_path, "deadbeef" + "0" * 23 + "1")) == 1
    assert find_trace(exporter.db_path, "0123abcd") == []
    for bad in ("xyz12345", "abc", "deadbeef' OR '1'='1", "deadbeef%", "0" * 33, ""):
        with pytest.raises(ValueError, match="hex"):
            find_trace(exporter.db_path, bad)
    assert span_count(exporter.db_path) == 2


def test_queries_on_a_missing_database_are_empty(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    assert find_trace(missing, "deadbeef") == []
    assert recent_turns(missing) == []
    assert scoreboard(missing, since_ns=0, now_ns=NOW_NS) == []
    assert format_turns([]) == "no turns recorded yet"
    assert not missing.exists()


# Failure modes of the store --------------------------------------------------------------------
def test_unwritable_data_dir_drops_and_counts(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    telemetry = setup_tracing(data_dir=blocker / "data")
    with new_turn_span(telemetry.tracer):
        with telemetry.tracer.start_as_current_span("child"):
            pass
    telemetry.force_flush()
    assert telemetry.dropped_spans == 2
    telemetry.shutdown()


def test_read_only_data_dir_drops_and_counts(tmp_path: Path) -> None:
    data = tmp_path / "ro"
    data.mkdir()
    if os.geteuid() == 0:  # root ignores permissions: a read-only tmpfs is read-only for root too
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(data)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"root ignores permissions and cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
        undo = ["umount", "-l", str(data)]
    else:
        data.chmod(0o500)
        undo = ["chmod", "700", str(data)]
    try:
        exporter = SQLiteSpanExporter(data / "telemetry.db")
        assert exporter.export([make_span(1, 1, "turn", NOW_NS)]) is SpanExportResult.FAILURE
        assert exporter.dropped_spans == 1
    finally:
        subprocess.run(undo, capture_output=True)


def test_locked_database_drops_then_recovers(tmp_path: Path) -> None:
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db", busy_timeout_s=0.05)
    assert exporter.export([make_span(1, 1, "turn", NOW_NS)]) is SpanExportResult.SUCCESS
    locker = sqlite3.connect(exporter.db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    result = exporter.export([make_span(2, 2, "turn", NOW_NS), make_span(2, 3, "x", NOW_NS, parent=2)])
    assert result is SpanExportResult.FAILURE and exporter.dropped_spans == 2
    locker.execute("ROLLBACK")
    locker.close()
    assert exporter.export([make_span(3, 4, "turn", NOW_NS)]) is SpanExportResult.SUCCESS
    assert span_count(exporter.db_path) == 2
    exporter.shutdown()


# Retention -----------------------------------------------------------------------------------
def test_retention_deletes_old_spans_and_auto_prunes_once_an_hour(tmp_path: Path) -> None:
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db", retention_days=30)
    exporter.export([make_span(1, 1, "turn", NOW_NS - 40 * DAY_NS), make_span(2, 2, "turn", NOW_NS)])
    assert span_count(exporter.db_path) == 1  # the first export pruned the 40-day-old span
    exporter.export([make_span(3, 3, "turn", NOW_NS - 31 * DAY_NS)])  # within the hour: not pruned yet
    assert span_count(exporter.db_path) == 2
    assert exporter.prune(now_ns=NOW_NS) == 1
    assert [s.name for s in find_trace(exporter.db_path, f"{2:032x}")] == ["turn"]
    assert exporter.prune(now_ns=NOW_NS) == 0
    exporter.shutdown()


def test_size_cap_deletes_the_oldest_spans(tmp_path: Path) -> None:
    cap = 256 * 1024
    exporter = SQLiteSpanExporter(tmp_path / "telemetry.db", max_db_bytes=cap)
    payload = "x" * 1000
    for batch in range(10):
        exporter.export([make_span(batch * 100 + i + 1, i + 1, "turn", NOW_NS + batch * 100 + i,
                                   attributes={"blob": payload}) for i in range(100)])
    assert stored_bytes(exporter.db_path) > 4 * cap
    deleted = exporter.prune(now_ns=NOW_NS)
    assert deleted > 0
    wal = exporter.db_path.with_name("telemetry.db-wal")
    on_disk = exporter.db_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert stored_bytes(exporter.db_path) <= cap and on_disk <= cap
    remaining = span_count(exporter.db_path)
    assert remaining == 1000 - deleted and remaining > 50
    newest = find_trace(exporter.db_path, f"{1000:032x}")
    assert newest and not find_trace(exporter.db_path, f"{1:032x}")
    exporter.shutdown()


# Turns and scoreboard ----------------------------------------------------------------------------
def traffic() -> list[ReadableSpan]:
    """A day of turns and model calls (shared with tests/core/test_spans_postgres.py)."""
    spans = []
    for i in range(1, 101):  # 100 turns of i*10 ms, each with one call of i ms to model-a
        failed = i % 10 == 0
        spans.append(make_span(i, 1, "turn", NOW_NS - DAY_NS + i, i * 10, attributes={"chat.id": 1000 + i},
                               status=StatusCode.ERROR if failed else StatusCode.OK))
        spans.append(make_span(i, 2, "chat model-a", NOW_NS - DAY_NS + i, i, parent=1,
                               attributes={"gen_ai.request.model": "model-a"},
                               status=StatusCode.ERROR if failed else StatusCode.OK))
    spans.append(make_span(500, 1, "turn", NOW_NS - DAY_NS, 5))  # rejected before any LLM call
    spans.append(make_span(501, 2, "chat model-b", NOW_NS - DAY_NS, 7, parent=9,
                           attributes={"gen_ai.request.model": "model-b"}))
    spans.append(make_span(600, 1, "turn", NOW_NS - 3 * DAY_NS, 1))  # outside the window
    return spans


def _write_traffic(db_path: Path) -> None:
    spans = traffic()
    exporter = SQLiteSpanExporter(db_path)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()


def test_scoreboard_percentiles_on_known_data(tmp_path: Path) -> None:
    db_path = tmp_path / "telemetry.db"
    _write_traffic(db_path)
    total, model_a, model_b = scoreboard(db_path, since_ns=NOW_NS - 2 * DAY_NS, now_ns=NOW_NS)
    assert total.model == ALL_MODELS and total.turns == 101 and total.llm_calls == 101
    assert (model_a.model, model_a.llm_calls, model_a.llm_failures) == ("model-a", 100, 10)
    assert model_a.llm_failure_rate == pytest.approx(0.1)
    assert (model_a.llm_p50_ms, model_a.llm_p95_ms, model_a.llm_p99_ms) == (50.0, 95.0, 99.0)
    assert (model_a.turns, model_a.failed_turns) == (100, 10)
    assert (model_a.turn_p50_ms, model_a.turn_p95_ms, model_a.turn_p99_ms) == (500.0, 950.0, 990.0)
    assert (model_b.llm_calls, model_b.turns, model_b.llm_p99_ms) == (1, 0, 7.0)
    assert "model-a" in format_scoreboard([total, model_a, model_b])
    assert scoreboard(db_path, since_ns=NOW_NS, now_ns=NOW_NS + DAY_NS) == []


def test_recent_turns_newest_first(tmp_path: Path) -> None:
    db_path = tmp_path / "telemetry.db"
    _write_traffic(db_path)
    turns = recent_turns(db_path, last=3)
    assert [t.chat_id for t in turns] == [1100, 1099, 1098]
    assert turns[0].status == "ERROR" and turns[0].duration_ms == 1000.0 and turns[0].ref == f"{100:032x}"[:8]
    table = format_turns(turns).splitlines()
    assert len(table) == 4 and "1099" in table[2] and turns[1].ref in table[2]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert [percentile(list(range(1, 11)), p) for p in (50, 95, 99, 100)] == [5, 10, 10, 10]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(1, 100))
def test_percentile_is_an_observed_value_covering_pct(values: list[float], pct: float) -> None:
    result = percentile(values, pct)
    assert result in values
    assert sum(v <= result for v in values) >= pct / 100 * len(values)
