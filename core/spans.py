"""A lean OpenTelemetry tracer: the OTel API's spans, context and ids, recorded for a fraction
of the SDK's cost.

Why not the SDK's `TracerProvider`: with bench/trace_overhead.py, its recording spans (locked,
validated attribute maps, a ReadableSpan copy at every end, the batch processor keeping spans
alive for the garbage collector to scan) plus the per-span SQLite rows cost an in-process turn
about 50% more CPU than unsampled spans. These spans are plain objects with the fields of the
SDK's `ReadableSpan` (`name`, `context`, `parent`, `kind`, `start_time`, `end_time`,
`attributes`, `events`, `status`, `resource`, `instrumentation_scope`, `links`), so SDK
`SpanExporter`s take them as they are (OTLP, through `core.tracing._RedactingExporter`).

What stays OpenTelemetry: ids are random 128/64-bit ids like the SDK's; the current span lives
in `opentelemetry.context` (contextvars), so `trace.get_current_span()`, `use_span`, task
inheritance and the W3C propagator all work; spans implement `opentelemetry.trace.Span`.
Ended spans go to per-exporter queues that a background thread drains every `delay_s`, one
export call per batch: nothing on the turn's path waits for storage.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import INVALID_SPAN_ID, INVALID_TRACE_ID, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

logger = logging.getLogger(__name__)

MAX_ATTRIBUTES = 128  # the SDK's default span limits
MAX_EVENTS = 128
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = trace.TraceFlags(trace.TraceFlags.SAMPLED)
_NOT_SAMPLED = trace.TraceFlags(trace.TraceFlags.DEFAULT)
_getrandbits = random.getrandbits


def _span_id() -> int:
    span_id = _getrandbits(64)
    while span_id == INVALID_SPAN_ID:
        span_id = _getrandbits(64)
    return span_id


def _trace_id() -> int:
    trace_id = _getrandbits(128)
    while trace_id == INVALID_TRACE_ID:
        trace_id = _getrandbits(128)
    return trace_id


class ExportQueue:
    """Ended spans for one exporter, handed over in batches by a daemon thread.

    `put` runs on the event loop for every span, so it is a length check and a deque append
    (atomic under the GIL); a full queue drops the span and counts it rather than block a turn.
    With `records=True` the queue holds `Span.record()` tuples and calls the exporter's
    `export_records`: the span object is freed at once instead of waiting for the export, so
    the cyclic garbage collector never promotes (and later re-scans) thousands of live spans.
    """

    def __init__(self, exporter: SpanExporter, *, delay_s: float = 0.5, max_queue: int = 4096,
                 max_batch: int = 512, records: bool = False) -> None:
        self.exporter = exporter
        self.dropped = 0
        self._export = exporter.export_records if records else exporter.export  # type: ignore[attr-defined]
        self._records = records
        self._delay_s = delay_s
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._queue: deque[Span | SpanRecord] = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def put(self, span: Span) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue or self._stopped:
            self.dropped += 1
            return
        queue.append(span.record() if self._records else span)
        if len(queue) == self._max_batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Export everything queued so far (on the caller's thread); never raises."""
        queue = self._queue
        with self._export_lock:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                try:
                    self._export(batch)
                except Exception:  # an exporter must not kill the thread (ours never raises)
                    logger.exception("span export failed")

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout_s)
        self.flush()
        self.exporter.shutdown()


# (trace_id, span_id, parent_span_id | None, name, kind, start_ns, end_ns, status_code, status_description,
#  attributes, events): what the SQLite store needs of a span, with nothing for the GC to track
# unless an attribute holds a list or the span has events.
SpanRecord = tuple[int, int, int | None, str, SpanKind, int, int | None, StatusCode, str | None,
                   dict[str, Any], Sequence[Event]]


class Span(trace.Span):
    """A recording span; fields named as on the SDK's ReadableSpan, for exporters."""

    __slots__ = ("name", "context", "parent", "kind", "start_time", "end_time", "attributes", "events", "status",
                 "_tracer")

    links: tuple = ()

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
                 attributes: Mapping[str, AttributeValue] | None, start_time: int | None, tracer: Tracer) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.end_time: int | None = None
        self.attributes: dict[str, Any] = {}
        if attributes:
            self.set_attributes(attributes)
        self.events: list[Event] | tuple[()] = ()  # a list once an event is added: most spans have none
        self.status = _UNSET
        self._tracer = tracer
        self.start_time = start_time or time.time_ns()

    @property
    def resource(self) -> Resource:
        return self._tracer.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracer.scope

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None and value is not None and (key in self.attributes
                                                            or len(self.attributes) < MAX_ATTRIBUTES):
            self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        mine = self.attributes
        if self.end_time is not None:
            return
        if len(mine) + len(attributes) <= MAX_ATTRIBUTES and None not in attributes.values():
            mine.update(attributes)  # the common case, in one call: this runs a few times per stage
        else:
            for key, value in attributes.items():
                self.set_attribute(key, value)

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None,
                  timestamp: int | None = None) -> None:
        if self.end_time is None and len(self.events) < MAX_EVENTS:
            event = Event(name, dict(attributes or {}), timestamp or time.time_ns())
            if isinstance(self.events, list):
                self.events.append(event)
            else:
                self.events = [event]

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # OK is final (as in the SDK)
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, AttributeValue] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        kind = type(exception)
        module = kind.__module__
        event: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def record(self) -> SpanRecord:
        """The ended span as a plain tuple (ids as ints; see SpanRecord)."""
        context, parent, status = self.context, self.parent, self.status
        return (context.trace_id, context.span_id, parent.span_id if parent is not None else None, self.name,
                self.kind, self.start_time, self.end_time, status.status_code, status.description, self.attributes,
                self.events)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is None:
            self.end_time = end_time or time.time_ns()
            self._tracer.on_end(self)


class _Activation:
    """`start_as_current_span`'s context manager, as a class: cheaper than the generator the API uses."""

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
                 _tb: TracebackType | None) -> None:
        context_api.detach(self._token)
        span = self.span
        # Like the API's use_span: only Exception subclasses are errors (not CancelledError, GeneratorExit).
        if isinstance(error, Exception) and span.is_recording():
            if self._record_exception:
                span.record_exception(error, escaped=True)
            if self._set_status_on_exception:
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        if self._end_on_exit:
            span.end()


class Tracer(trace.Tracer):
    """Starts spans in the current OTel context; unsampled (ids only) when it has no queues."""

    def __init__(self, queues: Sequence[ExportQueue], *, resource: Resource, scope: InstrumentationScope) -> None:
        self.queues = tuple(queues)
        self.resource = resource
        self.scope = scope
        # What an ended span calls: the one queue's put itself in the usual case.
        self.on_end: Callable[[Span], None] = self.queues[0].put if len(self.queues) == 1 else self._fan_out

    def _fan_out(self, span: Span) -> None:
        for queue in self.queues:
            queue.put(span)

    @property
    def recording(self) -> bool:
        return bool(self.queues)

    def start_span(self, name: str, context: context_api.Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
                   attributes: Mapping[str, AttributeValue] | None = None, links: Sequence[trace.Link] | None = (),
                   start_time: int | None = None, record_exception: bool = True,
                   set_status_on_exception: bool = True) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent, trace_id = None, _trace_id()
        span_context = SpanContext(trace_id, _span_id(), is_remote=False,
                                   trace_flags=_SAMPLED if self.queues else _NOT_SAMPLED)
        if not self.queues:
            return trace.NonRecordingSpan(span_context)
        return Span(name, span_context, parent, kind, attributes, start_time, self)

    def start_as_current_span(self, name: str, context: context_api.Context | None = None,  # type: ignore[override]
                              kind: SpanKind = SpanKind.INTERNAL,
                              attributes: Mapping[str, AttributeValue] | None = None,
                              links: Sequence[trace.Link] | None = (), start_time: int | None = None,
                              record_exception: bool = True, set_status_on_exception: bool = True,
                              end_on_exit: bool = True) -> _Activation:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return _Activation(span, end_on_exit, record_exception, set_status_on_exception)

