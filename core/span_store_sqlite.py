"""telemetry.db under DATA_DIR: where spans go without DATABASE_URL (core/span_store.py builds the rows).

One sqlite3 connection in WAL mode, opened lazily on the span processor's worker thread and
migrated with core/span_schema.py. Besides retention by age, `prune` keeps the file under a
byte cap (the oldest batches go first): a PaaS volume or a Raspberry Pi's card is small. The
cap is SQLite's only: on PostgreSQL the database's size is the plan's to bound.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

from core.span_schema import migrations
from core.span_store import Redact, SpanBatchExporter, no_redaction

_INSERT = "INSERT INTO span_batches VALUES (?,?,?,?,?,?,?,?,?,?,?)"


class SQLiteSpanExporter(SpanBatchExporter):
    """Writes finished spans to `telemetry.db`, one transaction per batch (see the module doc).

    `prune` also keeps the file under `max_db_bytes` (the oldest batches go first); export()
    runs it at most once an hour, so the file may overshoot the cap by one hour of spans.
    """

    def __init__(self, db_path: Path, *, retention_days: int = 30, max_db_bytes: int = 256 * 1024 * 1024,
                 redact: Redact = no_redaction, busy_timeout_s: float = 1.0) -> None:
        super().__init__(retention_days=retention_days, redact=redact)
        self.db_path = db_path
        self.max_db_bytes = max_db_bytes
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _prune(self, now_ns: int) -> int:
        conn = self._connection()

        def delete(where: str, value: int) -> int:
            spans = conn.execute(f"SELECT COALESCE(SUM(span_count), 0) FROM span_batches WHERE {where}",
                                 [value]).fetchone()[0]
            conn.execute(f"DELETE FROM span_batches WHERE {where}", [value])
            return spans

        deleted = delete("start_ns < ?", now_ns - self.retention_days * 86_400 * 1_000_000_000)
        for _ in range(16):  # bounded: each pass removes a share proportional to the excess
            used = _used_bytes(conn)
            total = conn.execute("SELECT count(*) FROM span_batches").fetchone()[0]
            if used <= self.max_db_bytes or total == 0:
                break
            # Aim 10% under the cap so that the next few batches do not trigger another prune.
            share = 1 - (self.max_db_bytes * 0.9) / used
            offset = max(0, min(total - 1, int(total * share)))
            cutoff = conn.execute("SELECT start_ns FROM span_batches ORDER BY start_ns LIMIT 1 OFFSET ?",
                                  [offset]).fetchone()[0]
            deleted += delete("start_ns <= ?", cutoff)
        if deleted:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                # executescript steps the pragma to the end; execute() would free a single page.
                conn.executescript("PRAGMA incremental_vacuum;")
            else:  # a file created before auto_vacuum was set
                conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # the main file shrinks only here
        return deleted

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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


def _used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes held by live pages: what the file shrinks to once free pages are vacuumed."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return page_size * pages
