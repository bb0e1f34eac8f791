"""Spans in PostgreSQL (DATABASE_URL): the same `span_batches` rows as telemetry.db, so a PaaS whose
disk is wiped keeps its traces and every instance of the bot reads the same ones.

The rows are built by core/span_store.py (same format, same redaction); the table is created by
the migration p002_spans (core/store/pg_schema.py), which the bot runs at start. This exporter
runs on the span processor's worker thread, never on the event loop, so it holds one plain
synchronous psycopg connection of its own (not the stores' async pool): a slow or dead server
delays that thread only, and the processor drops (and counts) spans once its queue is full.

What differs from SQLite:
- Retention by age only. The byte cap is SQLite's: a managed PostgreSQL's size is the plan's to
  bound, and `TELEMETRY_RETENTION_DAYS` is the knob.
- A lost connection (a server restart, a failover, an idle timeout on the platform's proxy) is
  noticed at the next batch, which is retried once on a fresh connection instead of dropped.
- After a failed connect, batches are dropped at once for `retry_after_s` instead of each
  waiting `connect_timeout_s` for a server that is down.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg

from core.span_store import Redact, SpanBatchExporter, no_redaction

_INSERT = "INSERT INTO span_batches VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
# Two instances may run this at the same moment: each DELETE takes the row locks of what it
# removes, the second waits for the first and then skips the rows already gone (READ COMMITTED
# re-checks them), so nothing is deleted twice, counted twice or deadlocked on; the counts of
# the two merely add up to what was deleted.
_DELETE_OLD = ("WITH gone AS (DELETE FROM span_batches WHERE start_ns < %s RETURNING span_count) "
               "SELECT COALESCE(SUM(span_count), 0) FROM gone")


class SpanStoreUnreachable(ConnectionError):
    """The last connect failed a moment ago: the batch is dropped without waiting for another."""


class PostgresSpanExporter(SpanBatchExporter):
    """Writes finished spans to PostgreSQL's `span_batches`, one transaction per batch."""

    def __init__(self, url: str, *, retention_days: int = 30, redact: Redact = no_redaction,
                 connect_timeout_s: float = 5.0, statement_timeout_s: float = 10.0,
                 retry_after_s: float = 5.0) -> None:
        super().__init__(retention_days=retention_days, redact=redact)
        self._url = url  # libpq takes postgres:// and postgresql:// alike; never logged
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._retry_after_s = retry_after_s
        self._retry_at = 0.0
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:  # the URL holds the password
        return f"{type(self).__name__}(retention_days={self.retention_days})"

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        reused = self._conn is not None and not self._conn.closed
        conn = self._connection()
        try:
            self._insert(conn, rows)
        except psycopg.OperationalError:
            if not reused or not (conn.broken or conn.closed):  # a timeout is not retried: the server is slow
                raise
            # The connection died while idle between batches: once more on a new one. (Should
            # the COMMIT itself have reached the server before the link broke, the batch's spans
            # are stored twice; find_trace would show them twice, nothing else is affected.)
            self._close()
            self._insert(self._connection(), rows)

    @staticmethod
    def _insert(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        with conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(_INSERT, rows)

    def _prune(self, now_ns: int) -> int:
        cutoff_ns = now_ns - self.retention_days * 86_400 * 1_000_000_000
        row = self._connection().execute(_DELETE_OLD, [cutoff_ns]).fetchone()
        return int(row[0]) if row else 0

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):  # closing a broken connection may fail: it is gone anyway
                conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and self._conn.closed:
            self._conn = None
        if self._conn is None:
            if time.monotonic() < self._retry_at:
                raise SpanStoreUnreachable("PostgreSQL was unreachable a moment ago; retrying shortly")
            try:
                conn = psycopg.connect(self._url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout_s)),
                                       application_name="telegram-llm-gateway spans",
                                       keepalives=1, keepalives_idle=60, keepalives_interval=10, keepalives_count=3)
            except Exception:
                self._retry_at = time.monotonic() + self._retry_after_s
                raise
            try:
                # set_config, not SET: SET takes no bound parameters
                conn.execute("SELECT set_config('statement_timeout', %s, false)",
                             [f"{int(self._statement_timeout_s * 1000)}ms"])
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn
