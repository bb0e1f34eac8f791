"""One OpenTelemetry trace per turn, stored in SQLite under DATA_DIR and optionally sent over OTLP.

Why OpenTelemetry rather than hand-rolled ids: the trace id users see as `ref:` is the very id
an OTLP backend (Jaeger, Tempo, Honeycomb) shows, outbound LLM requests carry it in a standard
W3C `traceparent` header, and context propagation through `asyncio` tasks comes for free from
`opentelemetry.context` (contextvars). Spans are recorded by the lean tracer in core/spans.py
(the SDK's recording spans cost too much CPU per turn, see there) and exported with SDK
exporters. The tracer is private to a `Telemetry` object, never the global one, so tests and
the console can build several side by side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Status, StatusCode, format_trace_id
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from core.span_store import (  # noqa: F401 - SQLiteSpanExporter is part of this module's interface
    Redact,
    SQLiteSpanExporter,
    clean,
    clean_attributes,
    no_redaction,
)
from core.spans import ExportQueue, Tracer

logger = logging.getLogger(__name__)

SERVICE_NAME = "telegram-llm-gateway"
TELEMETRY_DB = "telemetry.db"
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


# Setup --------------------------------------------------------------------------------------
class Telemetry:
    """What `setup_tracing` builds: the tracer to hand to the pipeline, and its export queues."""

    def __init__(self, *, tracer: Tracer, queues: Sequence[ExportQueue], exporter: SQLiteSpanExporter,
                 db_path: Path, enabled: bool, otlp_exporter: SpanExporter | None) -> None:
        self.tracer = tracer
        self.queues = tuple(queues)
        self.exporter = exporter
        self.db_path = db_path
        self.enabled = enabled
        self.otlp_exporter = otlp_exporter
        self._shut_down = False

    @property
    def dropped_spans(self) -> int:
        """Spans lost: the SQLite store failed, or the queue was full (the store far behind)."""
        sqlite_queue = self.queues[:1]  # the first queue feeds SQLite; OTLP keeps its own count
        return self.exporter.dropped_spans + sum(queue.dropped for queue in sqlite_queue)

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now. Blocks: call it at shutdown or in tests, not in a turn."""
        for queue in self.queues:
            queue.flush()
        return True

    def shutdown(self) -> None:
        """Flush and stop the exporters; safe to call twice."""
        if not self._shut_down:
            self._shut_down = True
            for queue in self.queues:
                queue.shutdown()


def setup_tracing(*, data_dir: Path, retention_days: int = 30, max_db_bytes: int = 256 * 1024 * 1024,
                  service_version: str = "0.1.0", otlp_endpoint: str | None = None, enabled: bool = True,
                  export_delay_ms: int = 500, redact: Redact = no_redaction) -> Telemetry:
    """Build a private tracer: SQLite always, OTLP too when an endpoint is configured.

    Disabled tracing (or OTEL_SDK_DISABLED=true) records and exports nothing, but every turn
    still gets a valid trace id for its `ref` and `traceparent`. `otlp_endpoint` is a base URL
    like OTEL_EXPORTER_OTLP_ENDPOINT (`/v1/traces` is appended).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        enabled = False
    db_path = Path(data_dir) / TELEMETRY_DB
    exporter = SQLiteSpanExporter(db_path, retention_days=retention_days, max_db_bytes=max_db_bytes, redact=redact)
    otlp_exporter: SpanExporter | None = None
    queues: list[ExportQueue] = []
    if enabled:
        queues.append(ExportQueue(exporter, delay_s=export_delay_ms / 1000, records=True))
        if otlp_endpoint or any(os.environ.get(name) for name in _OTLP_ENV_VARS):
            otlp_exporter = _otlp_exporter(otlp_endpoint, redact)
            if otlp_exporter is not None:  # its own queue and thread: a slow collector never delays SQLite
                queues.append(ExportQueue(otlp_exporter, delay_s=export_delay_ms / 1000))
    tracer = Tracer(queues, resource=Resource.create({"service.name": SERVICE_NAME,
                                                      "service.version": service_version}),
                    scope=InstrumentationScope("telegram_llm_gateway", service_version))
    return Telemetry(tracer=tracer, queues=queues, exporter=exporter, db_path=db_path, enabled=enabled,
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
