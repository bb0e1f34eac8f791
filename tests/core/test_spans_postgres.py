"""Spans in PostgreSQL (DATABASE_URL) and in telemetry.db behave alike: the same behaviour tests run on
both backends, then what only PostgreSQL has (a server that is down, a lost connection, two instances
pruning at once, the CLI reading it). The database is a fresh one from tests/pgdb.py, migrated with the
bot's own migrations; its URL carries a password (the server trusts anyone, so it is never checked),
which must show up nowhere."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from config.settings import Settings
from core.logs import redactor
from core.span_source import PostgresSpans, SQLiteSpans, span_source
from core.span_store import SpanBatchExporter, record_of
from core.span_store_pg import PostgresSpanExporter
from core.span_store_sqlite import SQLiteSpanExporter
from core.store.engine import PostgresDatabase
from core.store.pg_schema import migrate_postgres
from core.telemetry import AmbiguousRef, find_trace, format_tree, recent_turns, scoreboard
from core.tracing import current_trace_id, new_turn_span, setup_tracing
from tests.core.test_tracing import DAY_NS, NOW_NS, make_span, traffic
from tests.pgdb import fresh_database

PASSWORD = "pw-Sp4ns-n0t-sh0wn"
DEAD_URL = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nothing_here"  # nothing listens on port 1
ROOT = Path(__file__).resolve().parents[2]


def with_password(url: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(netloc=f"{parsed.username or 'postgres'}:{PASSWORD}@{parsed.hostname}:{parsed.port or 5432}"
                           ).geturl()


async def _migrate(url: str) -> None:
    db = await PostgresDatabase.connect(url, min_size=1, max_size=1)
    try:
        await migrate_postgres(db)
    finally:
        await db.close()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One migrated database for the module; each test empties span_batches first."""
    with fresh_database("gw_spans") as url:
        asyncio.run(_migrate(url))
        yield with_password(url)


@dataclass
class Backend:
    name: str
    source: SQLiteSpans | PostgresSpans
    path: Path | None = None
    url: str | None = None

    def exporter(self, **options: object) -> SpanBatchExporter:
        if self.url is not None:
            return PostgresSpanExporter(self.url, **options)  # type: ignore[arg-type]
        return SQLiteSpanExporter(self.path, **options)  # type: ignore[arg-type]

    def rows(self) -> list[tuple]:
        """Every stored row, every column."""
        if self.url is not None:
            with psycopg.connect(self.url) as conn:
                return conn.execute("SELECT * FROM span_batches").fetchall()
        import sqlite3

        with sqlite3.connect(self.path) as conn:
            return conn.execute("SELECT * FROM span_batches").fetchall()


def _empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE span_batches")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        path = tmp_path / "telemetry.db"
        return Backend("sqlite", SQLiteSpans(path), path=path)
    url = request.getfixturevalue("pg_url")
    _empty(url)
    return Backend("postgres", PostgresSpans(url), url=url)


def recorded_turn(secret: str = "") -> tuple[str, list[ReadableSpan]]:
    """A real SDK turn (root, llm, model call; with an event and an error status): its spans."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with new_turn_span(tracer, attributes={"chat.id": 5, "note": f"uses {secret}"}) as root:
        trace_id = current_trace_id() or ""
        with tracer.start_as_current_span("llm"), tracer.start_as_current_span(
                "chat gpt-x", attributes={"gen_ai.request.model": "gpt-x", "gen_ai.usage.input_tokens": 12}):
            pass
        root.add_event(f"retry {secret}", {"detail": secret})
        root.set_status(StatusCode.ERROR, f"failed with {secret}")
    provider.shutdown()
    return trace_id, list(memory.get_finished_spans())


# The same behaviour on both backends ---------------------------------------------------------------
def test_a_turn_split_over_batches_is_found_whole_by_its_short_ref(backend: Backend) -> None:
    trace_id, spans = recorded_turn()
    exporter = backend.exporter()
    records = [record_of(span) for span in spans]  # ended in order: chat, llm, turn
    assert exporter.export_records(records[:1]) is SpanExportResult.SUCCESS  # the model call, alone
    assert exporter.export_records(records[1:]) is SpanExportResult.SUCCESS  # the rest, root last
    exporter.shutdown()
    found = find_trace(backend.source, trace_id[:8])
    assert [s.name for s in found] == ["turn", "llm", "chat gpt-x"]
    assert found[0].attributes == {"chat.id": 5, "note": "uses "} and found[0].status == "ERROR"
    assert found[2].parent_span_id == found[1].span_id and found[1].parent_span_id == found[0].span_id
    assert found[0].events[0]["name"] == "retry " and found[0].status_message == "failed with "
    assert find_trace(backend.source, trace_id) == found
    assert format_tree(found).splitlines()[-1].startswith("    chat gpt-x")  # under llm, under turn
    assert len(backend.rows()) == 2


def test_an_ambiguous_ref_lists_the_traces_and_an_unknown_one_finds_nothing(backend: Backend) -> None:
    exporter = backend.exporter()
    exporter.export([make_span(0xDEADBEEF << 96 | 1, 1, "turn", NOW_NS),
                     make_span(0xDEADBEEF << 96 | 2, 2, "turn", NOW_NS)])
    exporter.shutdown()
    with pytest.raises(AmbiguousRef) as info:
        find_trace(backend.source, "deadbeef")
    assert info.value.trace_ids == [f"{0xDEADBEEF << 96 | 1:032x}", f"{0xDEADBEEF << 96 | 2:032x}"]
    assert len(find_trace(backend.source, "deadbeef" + "0" * 23 + "1")) == 1
    assert find_trace(backend.source, "0123abcd") == []
    with pytest.raises(ValueError, match="hex"):
        find_trace(backend.source, "deadbeef' OR '1'='1")


def test_recent_turns_and_the_scoreboard_on_known_traffic(backend: Backend) -> None:
    exporter = backend.exporter()
    assert exporter.export(traffic()) is SpanExportResult.SUCCESS
    exporter.shutdown()
    turns = recent_turns(backend.source, last=3)
    assert [t.chat_id for t in turns] == [1100, 1099, 1098]
    assert turns[0].status == "ERROR" and turns[0].duration_ms == 1000.0 and turns[0].ref == f"{100:032x}"[:8]
    total, model_a, model_b = scoreboard(backend.source, since_ns=NOW_NS - 2 * DAY_NS, now_ns=NOW_NS)
    assert (total.turns, total.llm_calls) == (101, 101)
    assert (model_a.model, model_a.llm_calls, model_a.llm_failures) == ("model-a", 100, 10)
    assert (model_a.llm_p50_ms, model_a.llm_p95_ms, model_a.llm_p99_ms) == (50.0, 95.0, 99.0)
    assert (model_a.turn_p50_ms, model_a.turn_p95_ms, model_a.turn_p99_ms) == (500.0, 950.0, 990.0)
    assert (model_b.llm_calls, model_b.turns, model_b.llm_p99_ms) == (1, 0, 7.0)
    assert scoreboard(backend.source, since_ns=NOW_NS, now_ns=NOW_NS + DAY_NS) == []


def test_retention_deletes_batches_past_their_days(backend: Backend) -> None:
    exporter = backend.exporter(retention_days=30)
    exporter.export([make_span(1, 1, "turn", NOW_NS - 40 * DAY_NS), make_span(2, 2, "turn", NOW_NS)])
    assert len(backend.rows()) == 1  # the first export pruned the 40-day-old batch
    exporter.export([make_span(3, 3, "turn", NOW_NS - 31 * DAY_NS)])  # within the hour: not pruned yet
    assert len(backend.rows()) == 2
    assert exporter.prune(now_ns=NOW_NS) == 1
    assert exporter.prune(now_ns=NOW_NS) == 0
    assert [t.trace_id for t in recent_turns(backend.source)] == [f"{2:032x}"]
    exporter.shutdown()


def test_a_secret_never_reaches_the_store(backend: Backend) -> None:
    secret = 'sk-"quoted"-secret'
    trace_id, spans = recorded_turn(secret)
    exporter = backend.exporter(redact=redactor([secret]))
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    stored = repr(backend.rows())
    assert "quoted" not in stored and "[REDACTED]" in stored
    root = find_trace(backend.source, trace_id)[0]
    assert root.attributes["note"] == "uses [REDACTED]" and root.status_message == "failed with [REDACTED]"
    assert root.events[0] == {"name": "retry [REDACTED]", "time_ns": root.events[0]["time_ns"],
                              "attributes": {"detail": "[REDACTED]"}}


def test_both_backends_give_identical_answers(pg_url: str, tmp_path: Path) -> None:
    _empty(pg_url)
    trace_id, spans = recorded_turn("hidden")
    sqlite_source, pg_source = SQLiteSpans(tmp_path / "telemetry.db"), PostgresSpans(pg_url)
    for exporter in (SQLiteSpanExporter(sqlite_source.path, redact=redactor(["hidden"])),
                     PostgresSpanExporter(pg_url, redact=redactor(["hidden"]))):
        assert exporter.export(traffic()) is SpanExportResult.SUCCESS
        assert exporter.export(spans[:2]) is SpanExportResult.SUCCESS and exporter.export(spans[2:])
        exporter.shutdown()
    assert find_trace(pg_source, trace_id[:8]) == find_trace(sqlite_source, trace_id[:8]) != []
    assert find_trace(pg_source, f"{7:032x}") == find_trace(sqlite_source, f"{7:032x}") != []
    assert recent_turns(pg_source, last=500) == recent_turns(sqlite_source, last=500)
    window = {"since_ns": NOW_NS - 2 * DAY_NS, "now_ns": time.time_ns() + 1}
    assert scoreboard(pg_source, **window) == scoreboard(sqlite_source, **window)
    assert len(scoreboard(pg_source, **window)) == 4  # everyone, gpt-x, model-a, model-b


# What only PostgreSQL has -----------------------------------------------------------------------
def test_a_dead_database_drops_spans_without_raising_or_showing_the_password(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING)
    exporter = PostgresSpanExporter(DEAD_URL, connect_timeout_s=1)
    assert exporter.export([make_span(1, 1, "turn", NOW_NS)]) is SpanExportResult.FAILURE
    started = time.monotonic()
    assert exporter.export([make_span(2, 2, "turn", NOW_NS), make_span(2, 3, "x", NOW_NS, parent=2)]) \
        is SpanExportResult.FAILURE
    assert time.monotonic() - started < 0.5  # no new connect attempt right after a failed one
    assert exporter.dropped_spans == 3
    assert exporter.prune() == 0
    exporter.shutdown()
    telemetry = setup_tracing(data_dir=tmp_path, database_url=DEAD_URL, export_delay_ms=50)
    with new_turn_span(telemetry.tracer), telemetry.tracer.start_as_current_span("child"):
        pass  # the turn itself never notices
    telemetry.force_flush()
    assert telemetry.dropped_spans == 2
    telemetry.shutdown()
    assert find_trace(DEAD_URL, "deadbeef") == [] and recent_turns(DEAD_URL) == []
    assert scoreboard(DEAD_URL, since_ns=0, now_ns=NOW_NS) == []
    warnings = [record.getMessage() for record in caplog.records]
    assert any("dropped 1 spans" in line for line in warnings)
    reads = [line for line in warnings if line.startswith("cannot read spans from")]
    assert len(reads) == 3 and "postgresql://postgres:***@127.0.0.1:1/nothing_here" in reads[0]
    assert all(PASSWORD not in line and "\n" not in line for line in warnings)


def test_a_lost_connection_is_reopened_and_the_batch_kept(pg_url: str) -> None:
    _empty(pg_url)
    exporter = PostgresSpanExporter(pg_url)
    assert exporter.export([make_span(1, 1, "turn", NOW_NS)]) is SpanExportResult.SUCCESS
    with psycopg.connect(pg_url, autocommit=True) as admin:  # what a server restart does to it
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'telegram-llm-gateway spans' "
                               "AND datname = current_database()").fetchone()
    assert killed == (1,)
    assert exporter.export([make_span(2, 2, "turn", NOW_NS)]) is SpanExportResult.SUCCESS
    assert exporter.dropped_spans == 0
    assert sorted(t.trace_id for t in recent_turns(pg_url)) == [f"{1:032x}", f"{2:032x}"]
    exporter.shutdown()


def test_two_instances_pruning_at_once_delete_each_batch_once(pg_url: str) -> None:
    _empty(pg_url)
    writer = PostgresSpanExporter(pg_url, retention_days=1)
    writer.prune(now_ns=0)  # as if an hour had not passed yet: the old batches stay until asked
    assert writer.export([make_span(i, i, "turn", NOW_NS - 2 * DAY_NS) for i in range(1, 301)]) \
        is SpanExportResult.SUCCESS
    writer.shutdown()
    instances = [PostgresSpanExporter(pg_url, retention_days=1) for _ in range(2)]
    start = threading.Barrier(2)
    deleted: list[int] = []

    def prune(exporter: PostgresSpanExporter) -> None:
        start.wait()
        deleted.append(exporter.prune(now_ns=NOW_NS))

    threads = [threading.Thread(target=prune, args=(exporter,)) for exporter in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(deleted) == 300 and len(deleted) == 2
    assert recent_turns(pg_url) == []
    for exporter in instances:
        exporter.shutdown()


def test_a_database_without_the_table_has_nothing_recorded_yet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with fresh_database("gw_spans_bare") as url:
        assert find_trace(url, "deadbeef") == [] and recent_turns(url) == []
        assert scoreboard(url, since_ns=0, now_ns=NOW_NS) == []
        assert not caplog.records  # nothing recorded is not a failure
        exporter = PostgresSpanExporter(url)
        assert exporter.export([make_span(1, 1, "turn", NOW_NS)]) is SpanExportResult.FAILURE
        assert exporter.dropped_spans == 1
        exporter.shutdown()


async def test_setup_tracing_with_a_database_url_records_turns_there(pg_url: str, tmp_path: Path) -> None:
    _empty(pg_url)
    telemetry = setup_tracing(data_dir=tmp_path, database_url=pg_url, export_delay_ms=50)
    with new_turn_span(telemetry.tracer, attributes={"chat.id": 42}):
        trace_id = current_trace_id() or ""
        with telemetry.tracer.start_as_current_span("llm"):
            pass
    telemetry.force_flush()
    # How the bot reads it: in a thread, several at once, each on its own connection.
    found = await asyncio.gather(*(asyncio.to_thread(find_trace, telemetry.spans, trace_id[:8]) for _ in range(4)))
    assert all([s.name for s in spans] == ["turn", "llm"] for spans in found)
    assert not (tmp_path / "telemetry.db").exists()
    settings = Settings(_env_file=None, data_dir=tmp_path, database_url=pg_url)
    assert [t.chat_id for t in recent_turns(span_source(settings))] == [42]
    assert PASSWORD not in f"{telemetry.spans} {telemetry.spans!r} {telemetry.exporter!r} {span_source(settings)}"
    assert str(span_source(Settings(_env_file=None, data_dir=tmp_path))) == str(tmp_path / "telemetry.db")
    telemetry.shutdown()


def _cli(*args: str, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def test_the_cli_reads_postgres_and_says_so_in_one_line_when_it_cannot(pg_url: str, tmp_path: Path) -> None:
    _empty(pg_url)
    trace_id, spans = recorded_turn()
    exporter = PostgresSpanExporter(pg_url)
    exporter.export(spans)
    exporter.shutdown()
    shown = _cli("trace", trace_id[:8], database_url=pg_url, data_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[0] for line in shown.stdout.splitlines()] == ["turn", "·", "llm", "chat"]
    listed = _cli("traces", database_url=pg_url, data_dir=tmp_path)
    assert listed.returncode == 0 and trace_id[:8] in listed.stdout
    for args in (["trace", "deadbeef"], ["traces"]):
        dead = _cli(*args, database_url=DEAD_URL, data_dir=tmp_path)
        assert dead.returncode in (0, 1) and "Traceback" not in dead.stderr
        assert PASSWORD not in dead.stdout + dead.stderr
        assert "cannot read spans from postgresql://postgres:***@127.0.0.1:1/nothing_here" in dead.stderr
