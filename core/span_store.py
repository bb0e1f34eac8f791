"""The write side of the spans: finished spans, stored a trace's batch at a time.

Layout: one row of `span_batches` per trace per export batch, holding that trace's spans as a
JSON array, plus the few columns queries need without opening the JSON (the root span's
name, times, status and chat, and the `chat {model}` calls). A turn is one to three rows (its
spans end over a few export rounds) instead of fifteen: per span that is a list and a share
of one JSON encoding instead of an index insert, which is most of what tracing costs a turn
(bench/trace_overhead.py). This module builds the rows (`SpanBatchExporter`); a store writes
them: telemetry.db under DATA_DIR (core/span_store_sqlite.py, schema in core/span_schema.py)
or PostgreSQL when DATABASE_URL is set (core/span_store_pg.py, schema in
core/store/pg_schema.py). core/telemetry.py reads the table.

It never raises: when the store fails (SQLite locked, read-only or full; PostgreSQL down) the
batch is dropped and counted in `dropped_spans`, with at most one warning a minute. The
database opens lazily and is retried on the next batch, so an unwritable DATA_DIR or an
unreachable server at start degrades tracing, not the bot.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

logger = logging.getLogger(__name__)

MAX_ATTRIBUTE_CHARS = 4096  # applied after redaction, so a cut can never leave half a secret behind
PRUNE_INTERVAL_S = 3600.0
DROP_LOG_INTERVAL_S = 60.0
Redact = Callable[[str], str]
# Enum members read once: looking one up on its class goes through a descriptor, per span.
_INTERNAL = SpanKind.INTERNAL
_UNSET = StatusCode.UNSET


def no_redaction(text: str) -> str:
    return text


def clean(value: Any, redact: Redact) -> Any:
    """A value as stored: strings redacted, then cut to MAX_ATTRIBUTE_CHARS (lists item by item)."""
    if isinstance(value, str):
        return redact(value)[:MAX_ATTRIBUTE_CHARS]
    if isinstance(value, list | tuple):
        return [clean(item, redact) for item in value]
    return value


def clean_attributes(attributes: Mapping[str, Any] | None, redact: Redact) -> dict[str, Any]:
    return {key: clean(value, redact) for key, value in (attributes or {}).items()}


# One encoder built once: json.dumps with options builds a new JSONEncoder per call. Compact,
# non-ASCII kept as is, and anything JSON has no type for stored as its str().
encode_json = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode


# (trace_id, span_id, parent_span_id | None, name, kind name, start_ns, end_ns, status code name,
#  status description, attributes, events): what the store needs of a span. Ints, strings and a
# dict of plain values: nothing the garbage collector has to follow (core/span_processor.py says
# why), unless an attribute holds a list or the span has events.
SpanRecord = tuple[int, int, int | None, str, str, int, int, str, str | None, dict[str, Any], tuple[Event, ...]]


def record_of(span: ReadableSpan) -> SpanRecord:
    """An ended SDK span as a SpanRecord (a plain dict copy of its attributes)."""
    context, parent, status, kind = span.context, span.parent, span.status, span.kind
    code = status.status_code
    attributes = span.attributes
    start_ns = span.start_time or 0
    return (context.trace_id, context.span_id, parent.span_id if parent is not None else None, span.name,
            "INTERNAL" if kind is _INTERNAL else kind.name, start_ns, span.end_time or start_ns,
            "UNSET" if code is _UNSET else code.name, status.description,
            dict(attributes) if attributes else {}, span.events)


def _fits(attributes: dict[str, Any]) -> bool:
    """No string (alone or in a list) longer than MAX_ATTRIBUTE_CHARS."""
    for value in attributes.values():
        if type(value) is str:
            if len(value) > MAX_ATTRIBUTE_CHARS:
                return False
        elif type(value) is list or type(value) is tuple:
            if any(type(item) is str and len(item) > MAX_ATTRIBUTE_CHARS for item in value):
                return False
    return True


# Exporters ----------------------------------------------------------------------------------
class SpanBatchExporter(SpanExporter):
    """What both stores share: batches to `span_batches` rows (redacted), dropping instead of
    raising, retention once an hour. A store adds `_write` (one transaction of rows), `_prune`
    and `_close`; all three run under `_lock` (the worker thread and force_flush/prune callers
    share one connection)."""

    def __init__(self, *, retention_days: int, redact: Redact) -> None:
        self.retention_days = retention_days
        self.dropped_spans = 0
        self._redact = redact
        self._lock = threading.Lock()
        self._shut_down = False
        self._warned_at = -DROP_LOG_INTERVAL_S
        self._pruned_at = -PRUNE_INTERVAL_S

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert the rows in one transaction, or raise."""
        raise NotImplementedError

    def _prune(self, now_ns: int) -> int:
        """Delete what retention says; the number of spans deleted."""
        raise NotImplementedError

    def _close(self) -> None:
        """Drop the connection (the next batch opens a new one)."""
        raise NotImplementedError

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The SDK's exporter interface, for any span processor."""
        return self.export_records([record_of(span) for span in spans])

    def export_records(self, records: Sequence[SpanRecord]) -> SpanExportResult:
        """Store a batch of ended spans; core.span_processor's worker thread calls this."""
        if self._shut_down:
            return SpanExportResult.FAILURE
        try:
            rows = self._rows(records)
            with self._lock:
                self._write(rows)
        except Exception as error:  # anything at all: the export thread must not die, nor a turn wait
            self._drop(len(records), error)
            return SpanExportResult.FAILURE
        if time.monotonic() - self._pruned_at >= PRUNE_INTERVAL_S:
            self.prune()
        return SpanExportResult.SUCCESS

    def _rows(self, records: Sequence[SpanRecord]) -> list[tuple[Any, ...]]:
        """One row per trace of the batch, redacted.

        This runs for every span, so the common case is cheap: a list per span, one JSON
        encoding per trace, one redaction pass over the whole batch. Only a trace holding a
        secret, a value longer than MAX_ATTRIBUTE_CHARS or events (exception stack traces) is
        rebuilt the exact way: every string redacted on its own, then cut.
        """
        redact = self._redact
        traces: dict[int, list[list[Any]]] = {}
        exact: set[int] = set()
        for trace_id, span_id, parent_id, name, kind, start_ns, end_ns, code, description, attributes, events \
                in records:
            # printf-style formatting: the cheapest way to hex here, and this runs per span
            item = ["%016x" % span_id, "%016x" % parent_id if parent_id is not None else None,  # noqa: UP031
                    name, kind, start_ns, end_ns, code, description, attributes, []]
            trace_spans = traces.get(trace_id)
            if trace_spans is None:
                trace_spans = traces[trace_id] = []
            trace_spans.append(item)
            if events:
                exact.add(trace_id)
                item[9] = [{"name": event.name, "time_ns": event.timestamp,
                            "attributes": dict(event.attributes or {})} for event in events]
        texts = {trace_id: encode_json(items) for trace_id, items in traces.items()}
        for trace_id, text in texts.items():  # a short text cannot hold a long value
            if len(text) > MAX_ATTRIBUTE_CHARS and any(
                    not _fits(item[8]) or (item[7] and len(item[7]) > MAX_ATTRIBUTE_CHARS) for item in traces[trace_id]):
                exact.add(trace_id)
        joined = "\x1f".join(texts.values())
        if redact(joined) != joined:
            exact.update(trace_id for trace_id, text in texts.items() if redact(text) != text)
        for trace_id in exact:
            for item in traces[trace_id]:
                item[2] = redact(item[2])
                item[7] = clean(item[7], redact) if item[7] else None
                item[8] = clean_attributes(item[8], redact)
                item[9] = [{"name": redact(event["name"]), "time_ns": event["time_ns"],
                            "attributes": clean_attributes(event["attributes"], redact)} for event in item[9]]
            texts[trace_id] = encode_json(traces[trace_id])
        return [self._row(trace_id, items, texts[trace_id]) for trace_id, items in traces.items()]

    @staticmethod
    def _row(trace_id: int, items: list[list[Any]], text: str) -> tuple[Any, ...]:
        root = None
        calls = []
        start_ns, end_ns = items[0][4], items[0][5]
        for item in items:  # one pass: this runs for every span too
            if item[4] < start_ns:
                start_ns = item[4]
            if item[5] > end_ns:
                end_ns = item[5]
            if item[1] is None:
                root = item
            elif item[2][:5] == "chat " and "gen_ai.request.model" in item[8]:
                calls.append([item[8]["gen_ai.request.model"], item[4], item[5] - item[4], item[6]])
        if root is None:
            return (f"{trace_id:032x}", start_ns, end_ns, len(items), None, None, None, None, None,
                    encode_json(calls) if calls else None, text)
        chat_id = root[8].get("chat.id")
        return (f"{trace_id:032x}", start_ns, end_ns, len(items), root[2], root[4], root[5], root[6],
                chat_id if type(chat_id) is int else None, encode_json(calls) if calls else None, text)

    def prune(self, *, now_ns: int | None = None) -> int:
        """Delete spans past retention (and, on SQLite, the oldest until the file fits its cap).

        Returns the number of spans deleted (0 when the database cannot be reached). export()
        runs it at most once an hour.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        self._pruned_at = time.monotonic()
        try:
            with self._lock:
                return self._prune(now_ns)
        except Exception as error:  # it also runs from export(), which must never raise
            self._warn("telemetry prune failed: %s: %s", type(error).__name__, self._said(error))
            return 0

    def shutdown(self) -> None:
        self._shut_down = True
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export commits before returning

    def _drop(self, count: int, error: BaseException) -> None:
        self.dropped_spans += count
        with self._lock:
            self._close()  # reconnect next time: the file may have been fixed, the server be back
        self._warn("telemetry: dropped %d spans (%d so far) because %s: %s; turns are unaffected",
                   count, self.dropped_spans, type(error).__name__, self._said(error))

    def _said(self, error: BaseException) -> str:
        """An error's first line, redacted: a driver's message may hold the server's URL, or run on."""
        return self._redact((str(error).strip().splitlines() or [""])[0])

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= DROP_LOG_INTERVAL_S:
            self._warned_at = now
            logger.warning(message, *args)
