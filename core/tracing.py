"""One OpenTelemetry trace per turn, recorded by the SDK, stored in SQLite under DATA_DIR (or in
PostgreSQL with DATABASE_URL) and optionally sent over OTLP.

Why OpenTelemetry rather than hand-rolled ids: the trace id users see as `ref:` is the very id
an OTLP backend (Jaeger, Tempo, Honeycomb) shows, outbound LLM requests carry it in a standard
W3C `traceparent` header, and context propagation through `asyncio` tasks comes for free from
`opentelemetry.context` (contextvars). Spans are recorded by the SDK's `TracerProvider`, one
private provider per `Telemetry` (never the global one), so tests and the console can build
several side by side. Finished spans reach telemetry.db through our span processor
(core/span_processor.py says why not the SDK's `BatchSpanProcessor`) and
`core.span_store_sqlite.SQLiteSpanExporter` (or PostgreSQL's `span_batches` through
`core.span_store_pg.PostgresSpanExporter`), in batches on the processor's worker thread: nothing
on a turn's path waits for storage. The OTLP export, when configured, has the SDK's
`BatchSpanProcessor` and its own thread. The SDK reads the standard variables itself:
OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (the resource), OTEL_TRACES_SAMPLER(_ARG),
OTEL_SPAN_*_LIMIT, OTEL_BSP_* (the OTLP export's batches) and OTEL_EXPORTER_OTLP_*.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from core.span_processor import RecordBatchProcessor
from core.span_source import TELEMETRY_DB, PostgresSpans, SpanReader, SQLiteSpans
from core.span_store import Redact, SpanBatchExporter, clean, clean_attributes, no_redaction
from core.span_store_sqlite import SQLiteSpanExporter

logger = logging.getLogger(__name__)

SERVICE_NAME = "telegram-llm-gateway"
SCOPE_NAME = "telegram_llm_gateway"
_OTLP_ENV_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Explicit W3C propagator: the global one follows OTEL_PROPAGATORS, which could drop traceparent.
_W3C = TraceContextTextMapPropagator()


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


class _RedactingExporter(SpanExporter):
    """Wraps the OTLP exporter: spans leaving the machine get the same redaction as SQLite rows."""

    def __init__(self, inner: SpanExporter, redact: Redact) -> None:
        self.inner = inner
        self._redact = redact

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        redact = self._redact
        cleaned = [ReadableSpan(
            name=redact(span.name), context=span.context, parent=span.parent, resource=span.resource,
            attributes=clean_attributes(span.attributes, redact),
            events=[Event(redact(e.name), clean_attributes(e.attributes, redact), e.timestamp) for e in span.events],
            links=span.links, kind=span.kind, start_time=span.start_time, end_time=span.end_time,
            status=Status(span.status.status_code, clean(span.status.description, redact))
            if span.status.status_code is StatusCode.ERROR else span.status,
            instrumentation_scope=span.instrumentation_scope) for span in spans]
        return self.inner.export(cleaned)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Activation:
    """`start_as_current_span`'s context manager as one small class, with `trace.use_span`'s rules.

    Why: the API builds it from two nested generator context managers (the SDK tracer's and
    `use_span`), about a tenth of what an SDK span costs to start and end (callgrind, README
    "Benchmarks"), and a turn starts fifteen. Like `use_span`: only `Exception`s are errors (not
    cancellation or GeneratorExit), recorded and set as the status unless the caller said not
    to, and always raised on so that enclosing spans see them too.
    """

    __slots__ = ("span", "_token", "_end_on_exit", "_record_exception", "_set_status_on_exception")

    def __init__(self, span: trace.Span, end_on_exit: bool, record_exception: bool,
                 set_status_on_exception: bool) -> None:
        self.span = span
        self._end_on_exit = end_on_exit
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    def __enter__(self) -> trace.Span:
        self._token = context_api.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _traceback: TracebackType | None) -> None:
        context_api.detach(self._token)
        span = self.span
        if isinstance(error, Exception) and span.is_recording():
            if self._record_exception:
                span.record_exception(error)
            if self._set_status_on_exception:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        if self._end_on_exit:
            span.end()


class _ActivatingTracer(trace.Tracer):
    """The SDK tracer (its sampler, ids, spans and processors), with `_Activation` as the
    context manager of `start_as_current_span`."""

    def __init__(self, sdk_tracer: trace.Tracer) -> None:
        self.sdk_tracer = sdk_tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self.sdk_tracer.start_span(*args, **kwargs)

    def start_as_current_span(self, name: str, context: Context | None = None,  # type: ignore[override]
                              kind: SpanKind = SpanKind.INTERNAL,
                              attributes: Mapping[str, AttributeValue] | None = None,
                              links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> _Activation:
        span = self.sdk_tracer.start_span(name, context, kind, attributes, links, start_time, record_exception,
                                          set_status_on_exception)
        return _Activation(span, end_on_exit, record_exception, set_status_on_exception)


class _IdOnlyTracer(trace.Tracer):
    """Tracing off: spans record nothing but still carry fresh ids, as an unsampled SDK span does.

    Why not a TracerProvider: with OTEL_SDK_DISABLED=true the SDK hands out no-op tracers whose
    spans have no ids at all, and every turn needs one for its `ref:` and `traceparent`.
    """

    def __init__(self) -> None:
        self._ids = RandomIdGenerator()

    def start_span(self, name: str, context: Context | None = None, *args: object,  # type: ignore[override]
                   **kwargs: object) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self._ids.generate_trace_id()
        return NonRecordingSpan(SpanContext(trace_id, self._ids.generate_span_id(), is_remote=False))

    def start_as_current_span(self, name: str, context: Context | None = None,  # type: ignore[override]
                              *args: object, **kwargs: object) -> AbstractContextManager[trace.Span]:
        return trace.use_span(self.start_span(name, context), end_on_exit=True)


# Setup --------------------------------------------------------------------------------------
class Telemetry:
    """What `setup_tracing` builds: the tracer to hand to the pipeline, what feeds the store, and
    `spans`, the source core.telemetry's queries read (telemetry.db or PostgreSQL; `db_path` is
    the telemetry.db file, which stays unused when the spans are in PostgreSQL)."""

    def __init__(self, *, tracer: trace.Tracer, provider: TracerProvider | None, exporter: SpanBatchExporter,
                 processor: RecordBatchProcessor | None, db_path: Path, otlp_exporter: SpanExporter | None,
                 spans: SpanReader | None = None) -> None:
        self.tracer = tracer
        self.provider = provider
        self.exporter = exporter
        self.processor = processor
        self.db_path = db_path
        self.spans: SpanReader = spans if spans is not None else SQLiteSpans(db_path)
        self.otlp_exporter = otlp_exporter
        self._shut_down = False

    @property
    def enabled(self) -> bool:
        """Spans are recorded (an unsampled turn still counts as enabled: the sampler decided)."""
        return self.provider is not None

    @property
    def dropped_spans(self) -> int:
        """Spans lost to the store: it failed (SQLite locked, read-only or full; PostgreSQL down) or
        fell far behind."""
        return self.exporter.dropped_spans + (self.processor.dropped if self.processor is not None else 0)

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now. Blocks: call it at shutdown or in tests, not in a turn."""
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush and stop the processors and their exporters; safe to call twice."""
        if not self._shut_down:
            self._shut_down = True
            if self.provider is not None:
                self.provider.shutdown()
            else:
                self.exporter.shutdown()


def setup_tracing(*, data_dir: Path, retention_days: int = 30, max_db_bytes: int = 256 * 1024 * 1024,
                  service_version: str = "0.1.0", otlp_endpoint: str | None = None, enabled: bool = True,
                  export_delay_ms: int = 500, redact: Redact = no_redaction,
                  database_url: str | None = None) -> Telemetry:
    """Build a private TracerProvider: the span store always, OTLP too when an endpoint is configured.

    The store is PostgreSQL's `span_batches` when `database_url` is given (DATABASE_URL; its
    table comes from the migrations the bot runs at start; `max_db_bytes` is SQLite's only),
    else DATA_DIR/telemetry.db.

    Disabled tracing (or OTEL_SDK_DISABLED=true) records and exports nothing, but every turn
    still gets a valid trace id for its `ref` and `traceparent`. `otlp_endpoint` is a base URL
    like OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` is appended). `export_delay_ms` is how long
    a finished span may wait before it is written (so `python -m bot trace` finds a turn soon).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        enabled = False
    db_path = Path(data_dir) / TELEMETRY_DB
    exporter: SpanBatchExporter
    spans: SpanReader
    if database_url:
        from core.span_store_pg import PostgresSpanExporter  # psycopg is imported only when it is used

        exporter = PostgresSpanExporter(database_url, retention_days=retention_days, redact=redact)
        spans = PostgresSpans(database_url)
    else:
        exporter = SQLiteSpanExporter(db_path, retention_days=retention_days, max_db_bytes=max_db_bytes,
                                      redact=redact)
        spans = SQLiteSpans(db_path)
    if not enabled:
        return Telemetry(tracer=_IdOnlyTracer(), provider=None, exporter=exporter, processor=None,
                         db_path=db_path, otlp_exporter=None, spans=spans)
    # shutdown_on_exit=False: the SDK's atexit hook would keep every provider (and its thread)
    # alive until exit; Services.close() shuts ours down.
    provider = TracerProvider(resource=_resource(service_version), shutdown_on_exit=False)
    store_processor = RecordBatchProcessor(exporter, delay_s=export_delay_ms / 1000)
    provider.add_span_processor(store_processor)
    otlp_exporter: SpanExporter | None = None
    if otlp_endpoint or any(os.environ.get(name) for name in _OTLP_ENV_VARS):
        otlp_exporter = _otlp_exporter(otlp_endpoint, redact)
        if otlp_exporter is not None:  # its own processor and thread: a slow collector never delays the store
            provider.add_span_processor(BatchSpanProcessor(otlp_exporter))
    tracer = _ActivatingTracer(provider.get_tracer(SCOPE_NAME, service_version))
    return Telemetry(tracer=tracer, provider=provider, exporter=exporter, processor=store_processor,
                     db_path=db_path, otlp_exporter=otlp_exporter, spans=spans)


def _resource(service_version: str) -> Resource:
    """Our service name and version, unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES say otherwise."""
    ours = Resource.create({"service.name": SERVICE_NAME, "service.version": service_version})
    return ours.merge(OTELResourceDetector().detect())


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
