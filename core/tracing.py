"""One OpenTelemetry trace per turn, stored in SQLite under DATA_DIR and optionally sent over OTLP.

Why the SDK rather than hand-rolled ids: the trace id users see as `ref:` is the very id an
OTLP backend (Jaeger, Tempo, Honeycomb) shows, outbound LLM requests carry it in a standard
W3C `traceparent` header, and context propagation through `asyncio` tasks comes for free
from `opentelemetry.context` (contextvars). The provider is private to a `Telemetry` object,
never the global one, so tests and the console can build several side by side.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlite_utils
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode, format_span_id, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from sqlite_utils.migrations import Migrations

logger = logging.getLogger(__name__)

SERVICE_NAME = "telegram-llm-gateway"
TELEMETRY_DB = "telemetry.db"
MAX_ATTRIBUTE_CHARS = 4096  # applied after redaction, so a cut can never leave half a secret behind
PRUNE_INTERVAL_S = 3600.0
DROP_LOG_INTERVAL_S = 60.0
_OTLP_ENV_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Explicit W3C propagator: the global one follows OTEL_PROPAGATORS, which could drop traceparent.
_W3C = TraceContextTextMapPropagator()

Redact = Callable[[str], str]


def _no_redaction(text: str) -> str:
    return text


# Turn context -------------------------------------------------------------------------------
def new_turn_span(tracer: trace.Tracer, name: str = "turn",
                  attributes: Mapping[str, AttributeValue] | None = None) -> AbstractContextManager[trace.Span]:
    """Start a ROOT span (a fresh trace even inside another span) and make it current.

    An empty `Context` as parent is what makes it a root; `asyncio.create_task` copies
    contextvars, so tasks spawned inside the block land in the same trace. Exceptions leaving
    the block are recorded on the span and set its status to ERROR.
    """
    return tracer.start_as_current_span(name, context=Context(), attributes=attributes)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 lowercase hex digits, or None outside any span."""
    span_context = trace.get_current_span().get_span_context()
    return format_trace_id(span_context.trace_id) if span_context.is_valid else None


def short_ref(trace_id: str) -> str:
    """The `ref: xxxxxxxx` form users and operators see (DESIGN.md)."""
    return trace_id[:8]


def traceparent_headers() -> dict[str, str]:
    """W3C `traceparent` for the current span (empty outside a span), for outbound LLM calls."""
    headers: dict[str, str] = {}
    _W3C.inject(headers)
    return headers


# Redaction ----------------------------------------------------------------------------------
def _clean(value: Any, redact: Redact) -> Any:
    if isinstance(value, str):
        return redact(value)[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, list | tuple):
        return [_clean(item, redact) for item in value]
    return value


def _clean_attributes(attributes: Mapping[str, Any] | None, redact: Redact) -> dict[str, Any]:
    return {key: _clean(value, redact) for key, value in (attributes or {}).items()}


# SQLite store -------------------------------------------------------------------------------
migrations = Migrations("telemetry")


@migrations()
def m001_spans(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE spans (
        trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
        kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status TEXT NOT NULL,
        status_message TEXT, attributes TEXT NOT NULL, events TEXT NOT NULL)""")
    db.execute("CREATE INDEX spans_trace ON spans(trace_id)")
    db.execute("CREATE INDEX spans_start ON spans(start_ns)")
    # For operators browsing the file in Datasette; the code queries `spans` directly.
    db.execute("""CREATE VIEW turns AS SELECT
        datetime(start_ns / 1000000000, 'unixepoch') AS started_utc, substr(trace_id, 1, 8) AS ref,
        json_extract(attributes, '$."chat.id"') AS chat_id, status, (end_ns - start_ns) / 1e6 AS duration_ms,
        trace_id FROM spans WHERE parent_span_id IS NULL AND name = 'turn'""")


class SQLiteSpanExporter(SpanExporter):
    """Writes finished spans to `telemetry.db`, one transaction per batch.

    It runs on the BatchSpanProcessor's thread, so a slow disk never delays a turn; and it never
    raises: when SQLite fails (locked, read-only, disk full) the batch is dropped and counted in
    `dropped_spans`, with at most one warning a minute. The database opens lazily and is retried
    on the next batch, so an unwritable DATA_DIR at start degrades tracing, not the bot.
    """

    def __init__(self, db_path: Path, *, retention_days: int = 30, max_db_bytes: int = 256 * 1024 * 1024,
                 redact: Redact = _no_redaction, busy_timeout_s: float = 1.0) -> None:
        self.db_path = db_path
        self.retention_days = retention_days
        self.max_db_bytes = max_db_bytes
        self.dropped_spans = 0
        self._redact = redact
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()  # the worker thread and force_flush/prune callers share one connection
        self._conn: sqlite3.Connection | None = None
        self._shut_down = False
        self._warned_at = -DROP_LOG_INTERVAL_S
        self._pruned_at = -PRUNE_INTERVAL_S

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        try:
            rows = [self._row(span) for span in spans]
            with self._lock:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except Exception as error:  # anything at all: the SDK worker must not die, nor the turn wait
            self._drop(len(spans), error)
            return SpanExportResult.FAILURE
        if time.monotonic() - self._pruned_at >= PRUNE_INTERVAL_S:
            self.prune()
        return SpanExportResult.SUCCESS

    def prune(self, *, now_ns: int | None = None) -> int:
        """Delete spans past retention, then the oldest until the file fits `max_db_bytes`.

        Returns the number of spans deleted (0 when the database cannot be opened). export() runs
        it at most once an hour, so the file may overshoot the cap by one hour of spans.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        self._pruned_at = time.monotonic()
        try:
            with self._lock:
                return self._prune(self._connection(), now_ns)
        except Exception as error:  # it also runs from export(), which must never raise
            self._warn("telemetry prune failed: %s: %s", type(error).__name__, error)
            return 0

    def _prune(self, conn: sqlite3.Connection, now_ns: int) -> int:
        cutoff_ns = now_ns - self.retention_days * 86_400 * 1_000_000_000
        deleted = conn.execute("DELETE FROM spans WHERE start_ns < ?", [cutoff_ns]).rowcount
        for _ in range(16):  # bounded: each pass removes a share proportional to the excess
            used = _used_bytes(conn)
            total = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
            if used <= self.max_db_bytes or total == 0:
                break
            # Aim 10% under the cap so that the next few batches do not trigger another prune.
            share = 1 - (self.max_db_bytes * 0.9) / used
            offset = max(0, min(total - 1, int(total * share)))
            cutoff = conn.execute("SELECT start_ns FROM spans ORDER BY start_ns LIMIT 1 OFFSET ?", [offset]).fetchone()[0]
            deleted += conn.execute("DELETE FROM spans WHERE start_ns <= ?", [cutoff]).rowcount
        if deleted:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # executescript steps the pragma to the end; execute() would free a single page.
                conn.executescript("PRAGMA incremental_vacuum;")
            else:  # a file created before auto_vacuum was set
                conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # the main file shrinks only here
        return deleted

    def shutdown(self) -> None:
        self._shut_down = True
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export commits before returning

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False,
                                   timeout=self._busy_timeout_s)
            try:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # effective only before the first table
                db = sqlite_utils.Database(conn)
                db.enable_wal()
                conn.execute("PRAGMA synchronous=NORMAL")
                migrations.apply(db)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _row(self, span: ReadableSpan) -> tuple[Any, ...]:
        redact = self._redact
        context = span.get_span_context()
        events = [{"name": redact(event.name), "time_ns": event.timestamp,
                   "attributes": _clean_attributes(event.attributes, redact)} for event in span.events]
        return (
            format_trace_id(context.trace_id), format_span_id(context.span_id),
            format_span_id(span.parent.span_id) if span.parent else None,
            redact(span.name), span.kind.name, span.start_time or 0, span.end_time or span.start_time or 0,
            span.status.status_code.name,
            _clean(span.status.description, redact) if span.status.description else None,
            json.dumps(_clean_attributes(span.attributes, redact), default=str, ensure_ascii=False),
            json.dumps(events, default=str, ensure_ascii=False),
        )

    def _drop(self, count: int, error: BaseException) -> None:
        self.dropped_spans += count
        with self._lock:
            if self._conn is not None:  # reopen next time: the file may have been fixed or replaced
                self._conn.close()
                self._conn = None
        self._warn("telemetry: dropped %d spans (%d so far) because %s: %s; turns are unaffected",
                   count, self.dropped_spans, type(error).__name__, error)

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= DROP_LOG_INTERVAL_S:
            self._warned_at = now
            logger.warning(message, *args)


def _used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes held by live pages: what the file shrinks to once free pages are vacuumed."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return page_size * pages


class _RedactingExporter(SpanExporter):
    """Wraps the OTLP exporter: spans leaving the machine get the same redaction as SQLite rows."""

    def __init__(self, inner: SpanExporter, redact: Redact) -> None:
        self.inner = inner
        self._redact = redact

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        redact = self._redact
        cleaned = [ReadableSpan(
            name=redact(span.name), context=span.context, parent=span.parent, resource=span.resource,
            attributes=_clean_attributes(span.attributes, redact),
            events=[Event(redact(e.name), _clean_attributes(e.attributes, redact), e.timestamp) for e in span.events],
            links=span.links, kind=span.kind, start_time=span.start_time, end_time=span.end_time,
            status=Status(span.status.status_code, _clean(span.status.description, redact))
            if span.status.status_code is StatusCode.ERROR else span.status,
            instrumentation_scope=span.instrumentation_scope) for span in spans]
        return self.inner.export(cleaned)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


# Setup --------------------------------------------------------------------------------------
class Telemetry:
    """What `setup_tracing` builds: the tracer to hand to the pipeline, and its exporters."""

    def __init__(self, *, provider: TracerProvider, tracer: trace.Tracer, exporter: SQLiteSpanExporter,
                 db_path: Path, enabled: bool, otlp_exporter: SpanExporter | None) -> None:
        self.provider = provider
        self.tracer = tracer
        self.exporter = exporter
        self.db_path = db_path
        self.enabled = enabled
        self.otlp_exporter = otlp_exporter
        self._shut_down = False

    @property
    def dropped_spans(self) -> int:
        return self.exporter.dropped_spans

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now. Blocks: call it at shutdown or in tests, not in a turn."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Flush and stop the exporters; safe to call twice."""
        if not self._shut_down:
            self._shut_down = True
            self.provider.shutdown()


def setup_tracing(*, data_dir: Path, retention_days: int = 30, max_db_bytes: int = 256 * 1024 * 1024,
                  service_version: str = "0.1.0", otlp_endpoint: str | None = None, enabled: bool = True,
                  export_delay_ms: int = 500, redact: Redact = _no_redaction) -> Telemetry:
    """Build a private provider: SQLite always, OTLP when an endpoint is configured.

    Disabled tracing still uses the SDK with an ALWAYS_OFF sampler: nothing is recorded or
    exported, but every turn still gets a valid trace id for its `ref` and `traceparent`.
    `otlp_endpoint` is a base URL like OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` is appended).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        enabled = False
    db_path = Path(data_dir) / TELEMETRY_DB
    provider = TracerProvider(
        sampler=sampling.ALWAYS_ON if enabled else sampling.ALWAYS_OFF,
        resource=Resource.create({"service.name": SERVICE_NAME, "service.version": service_version}),
    )
    # OTEL_SDK_DISABLED would make get_tracer return a NoOpTracer without ids; ALWAYS_OFF covers it.
    provider._disabled = False
    exporter = SQLiteSpanExporter(db_path, retention_days=retention_days, max_db_bytes=max_db_bytes, redact=redact)
    otlp_exporter: SpanExporter | None = None
    if enabled:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=export_delay_ms))
        if otlp_endpoint or any(os.environ.get(name) for name in _OTLP_ENV_VARS):
            otlp_exporter = _otlp_exporter(otlp_endpoint, redact)
            if otlp_exporter is not None:
                provider.add_span_processor(BatchSpanProcessor(otlp_exporter, schedule_delay_millis=export_delay_ms))
    tracer = provider.get_tracer("telegram_llm_gateway", service_version)
    return Telemetry(provider=provider, tracer=tracer, exporter=exporter, db_path=db_path, enabled=enabled,
                     otlp_exporter=otlp_exporter)


def _otlp_exporter(endpoint: str | None, redact: Redact) -> SpanExporter | None:
    """The OTLP/HTTP exporter if its optional package is installed (imported lazily: an extra)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        logger.warning("OTLP export is configured but opentelemetry-exporter-otlp-proto-http is not installed "
                       "(pip install 'telegram-llm-gateway[otlp]'); spans stay in SQLite only")
        return None
    url = None
    # A signal-specific variable wins over the generic one (OTel spec); the exporter reads it itself.
    if endpoint and not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
    return _RedactingExporter(OTLPSpanExporter(endpoint=url), redact)
