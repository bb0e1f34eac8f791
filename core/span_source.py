"""Where recorded spans are read from: telemetry.db under DATA_DIR, or PostgreSQL (DATABASE_URL).

core/telemetry.py's queries (`find_trace`, `recent_turns`, `scoreboard`) take a *span source*:
a `SpanReader` (what `Telemetry.spans` and `span_source(settings)` give), or for convenience a
`Path` to a telemetry.db or a `postgresql://` URL. Both readers hand out the same `span_batches`
rows (core/span_store.py writes them alike), so every query is the same SQL on both and gives
the same results; the JSON is decoded in Python, not with either engine's json functions.

Each `read()` opens its own connection and closes it after: a reader holds no connection, so
its queries are safe from any thread, `asyncio.to_thread` included (inside the bot a PostgreSQL
read is blocking network I/O: run it there, never on the event loop). A missing database or
table reads as "nothing recorded yet" (`read()` gives None); a PostgreSQL server that cannot be
reached raises `SpansUnavailable` with one line that names the URL without its password.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from config.settings import database_url_secrets, database_url_shown

TELEMETRY_DB = "telemetry.db"
# Run a query (with `?` placeholders) on the reader's connection: its rows.
Fetch = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


class SpansUnavailable(Exception):
    """The span store could not be read; the message is one line, without secrets."""


@runtime_checkable
class SpanReader(Protocol):
    # An ORDER BY that lists one trace's batches in the order they were stored.
    batch_order: str

    def read(self) -> Any:  # noqa: ANN401 - a context manager of Fetch | None
        """`with reader.read() as fetch:` a query function, or None when nothing was recorded yet."""
        ...


class SQLiteSpans:
    """telemetry.db, read-only (the exporter's connection lives on another thread)."""

    batch_order = "rowid"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"SQLiteSpans({str(self.path)!r})"

    @contextmanager
    def read(self) -> Iterator[Fetch | None]:
        if not self.path.is_file():
            yield None
            return
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            conn.execute("SELECT 1 FROM span_batches LIMIT 0")
        except sqlite3.Error:
            conn.close()
            yield None
            return
        try:
            yield lambda sql, params: conn.execute(sql, params).fetchall()
        finally:
            conn.close()


class PostgresSpans:
    """`span_batches` in PostgreSQL: a short-lived connection per read."""

    # No rowid: a later batch of a trace holds spans that ended later; ctid breaks exact ties.
    batch_order = "end_ns, ctid"

    def __init__(self, url: str, *, connect_timeout_s: int = 5, statement_timeout_ms: int = 10_000) -> None:
        self._url = url  # libpq takes postgres:// and postgresql:// alike
        self._connect_timeout_s = connect_timeout_s
        self._statement_timeout_ms = statement_timeout_ms

    def __str__(self) -> str:
        return database_url_shown(self._url)

    def __repr__(self) -> str:
        return f"PostgresSpans({str(self)!r})"

    @contextmanager
    def read(self) -> Iterator[Fetch | None]:
        import psycopg  # only a PostgreSQL deployment pays for the import

        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._connect_timeout_s,
                                   application_name="telegram-llm-gateway spans")
        except psycopg.Error as error:
            raise SpansUnavailable(self._say(error)) from None
        with conn:
            def fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                try:
                    return conn.execute(sql.replace("?", "%s"), params).fetchall()  # our SQL has no other ? or %
                except psycopg.Error as error:
                    raise SpansUnavailable(self._say(error)) from None

            # One round trip: is there a table yet, and a bound on how long a query may take.
            exists = fetch("SELECT to_regclass('span_batches') IS NOT NULL, set_config('statement_timeout', ?, false)",
                           [f"{self._statement_timeout_ms}ms"])[0][0]
            yield fetch if exists else None

    def _say(self, error: BaseException) -> str:
        text = (str(error).strip().splitlines() or [""])[0]
        for secret in sorted(database_url_secrets(self._url), key=len, reverse=True):
            text = text.replace(secret, "***")
        return f"cannot read spans from {self}: {type(error).__name__}: {text}"


SpanSource = SpanReader | Path | str


def reader_of(source: SpanSource) -> SpanReader:
    """A reader for `source`: itself, a `postgres(ql)://` URL, or the path of a telemetry.db."""
    if isinstance(source, SpanReader):
        return source
    if isinstance(source, str) and source.startswith(("postgres://", "postgresql://")):
        return PostgresSpans(source)
    return SQLiteSpans(Path(source))


def span_source(settings: Any) -> SpanReader:  # noqa: ANN401 - config.settings.Settings
    """Where this configuration's spans are: PostgreSQL with DATABASE_URL, else DATA_DIR/telemetry.db.
    For the CLI, which has no Services; inside the bot use `services.telemetry.spans`."""
    if settings.database_url is not None:
        return PostgresSpans(settings.database_url.get_secret_value())
    return SQLiteSpans(Path(settings.data_dir) / TELEMETRY_DB)
