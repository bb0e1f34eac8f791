"""The span processor that feeds the span store: ended SDK spans, batched to the exporter
(telemetry.db, or PostgreSQL with DATABASE_URL) on a worker thread.

Why not the SDK's `BatchSpanProcessor` (which the OTLP export does use): it keeps every ended
span as a `ReadableSpan` (a dozen objects the cyclic garbage collector tracks: the span, its
bounded attribute map, event and link lists, their locks' owners) until the next export, up
to half a second later. At saturation that is a few thousand live spans surviving the young
collections, so they are promoted and the expensive full collections of a 150 MB process
come more often. This processor reduces a span to a `SpanRecord` (one tuple of ints, strings
and a plain dict: nothing inside for the collector to follow) the moment it ends, so the SDK's
objects are freed at once. Measured with `python -m bench.run --probe gc` and callgrind
(README, "Benchmarks"). It also counts the spans it drops when the store falls far behind,
which the SDK's processor only logs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from core.span_store import SpanRecord, record_of

logger = logging.getLogger(__name__)


class RecordExporter(Protocol):
    """What the processor writes to: a `core.span_store.SpanBatchExporter` (SQLite or PostgreSQL)."""

    def export_records(self, records: Sequence[SpanRecord]) -> object: ...

    def shutdown(self) -> None: ...


class RecordBatchProcessor(SpanProcessor):
    """Ended, sampled spans as `SpanRecord`s, handed to the exporter in batches by a daemon thread.

    `on_end` runs on the event loop for every span, so it is the record, a length check and a
    deque append (atomic under the GIL); a full queue drops the span and counts it rather than
    block a turn. The thread exports every `delay_s`, or at once when a batch is full.
    """

    def __init__(self, exporter: RecordExporter, *, delay_s: float = 0.5, max_queue: int = 4096,
                 max_batch: int = 512) -> None:
        self.exporter = exporter
        self.dropped = 0
        self._delay_s = delay_s
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if not span.context.trace_flags.sampled:
            return
        if len(queue) >= self._max_queue or self._stopped:
            self.dropped += 1
            return
        queue.append(record_of(span))
        if len(queue) == self._max_batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        """Export everything queued so far, on the caller's thread; never raises."""
        queue = self._queue
        with self._export_lock:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
                try:
                    self.exporter.export_records(batch)
                except Exception:  # an exporter must not kill the thread (ours never raises)
                    logger.exception("span export failed")

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._flush()
        return True

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(5.0)
        self._flush()
        self.exporter.shutdown()
