"""`migrate-to-postgres`: copy a SQLite DATA_DIR into an empty PostgreSQL database, all or nothing.

What is copied: every table of gateway.db (same names and columns in core/store/pg_schema.py),
the artifact files under DATA_DIR/artifacts into `artifact_blobs`, and telemetry.db's
`span_batches`. Ids are kept, and each identity column's sequence is moved past the highest id
SQLite ever handed out (its `sqlite_sequence`, not only the rows left), so new rows never collide
with copied ones and a deleted DLQ id named by an old alert is not reused.

Choices:
- The SQLite files are opened read-only and never changed: if anything goes wrong, unsetting
  DATABASE_URL brings the bot back on them as they were. So a gateway.db (or telemetry.db) whose
  migrations are behind this version is refused, not upgraded here: the bot upgrades it at start.
- One PostgreSQL transaction for everything, with the target tables locked against writers
  (a bot already started on it): either the whole DATA_DIR is there, or nothing is.
- Rows stream through COPY in batches from one SQLite read transaction (a consistent snapshot);
  artifacts go one file at a time: a big history never sits in memory at once.
- An artifact file missing (or whose bytes no longer match its name) is not fatal: its rows are
  copied without bytes, which is the state it was in on SQLite (its text cannot be read back
  there either), and it is reported.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import sqlite_utils

from core.span_schema import migrations as telemetry_migrations
from core.store.pg_schema import migrate_postgres
from core.store.schema import migrations as gateway_migrations

BATCH_ROWS = 1000
LOCK_TIMEOUT = "10s"  # a bot instance holding a table longer than this: refuse rather than hang
ARTIFACT_BLOBS = "artifact_blobs"
SPAN_BATCHES = "span_batches"
_SQLITE_OWN = ("_sqlite_migrations",)  # sqlite-utils' ledger; PostgreSQL has schema_migrations


class MigrationError(Exception):
    """A refusal or a failed check: one line saying what is wrong and what to do."""


@dataclass
class MigrationReport:
    copied: dict[str, int] = field(default_factory=dict)  # table: rows, in copy order
    artifact_bytes: int = 0
    missing_artifacts: list[str] = field(default_factory=list)  # sha256 of files absent on disk
    corrupt_artifacts: list[str] = field(default_factory=list)  # sha256 of files whose bytes differ
    applied_migrations: list[str] = field(default_factory=list)
    telemetry_found: bool = False


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection in one read transaction: a consistent snapshot, nothing written."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=5.0)
    try:
        conn.execute("BEGIN")
        yield conn
    finally:
        conn.close()


def check_current(conn: sqlite3.Connection, migrations: Any, label: str) -> None:
    """Refuse a SQLite file whose migrations are behind this version's."""
    pending = [m.name for m in migrations.pending(sqlite_utils.Database(conn))]
    if pending:
        raise MigrationError(
            f"{label} is behind this version ({len(pending)} SQLite migration(s) pending: {', '.join(pending)}); "
            "this command never changes the SQLite files: start this version of the bot once on this DATA_DIR "
            "without DATABASE_URL (it migrates them at start), stop it, then run migrate-to-postgres again")


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    """gateway.db's tables, parents before the tables whose foreign keys point at them."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        if row[0] not in _SQLITE_OWN]
    graph = {name: {row[2] for row in conn.execute(f'PRAGMA foreign_key_list("{name}")')} & set(names)
             for name in names}
    return list(TopologicalSorter(graph).static_order())


def sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def sqlite_count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def highest_ids(conn: sqlite3.Connection) -> dict[str, int]:
    """AUTOINCREMENT's record of the highest id each table ever handed out (deleted rows too)."""
    try:
        return {name: int(seq) for name, seq in conn.execute("SELECT name, seq FROM sqlite_sequence")}
    except sqlite3.OperationalError:  # no AUTOINCREMENT table has had a row yet
        return {}


async def pg_columns(pg: Any, table: str) -> set[str]:
    cursor = await pg.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                              "current_schema() AND table_name = %s", [table])
    return {row[0] for row in await cursor.fetchall()}


async def pg_count(pg: Any, table: str) -> int:
    cursor = await pg.execute(f'SELECT count(*) FROM "{table}"')
    return int((await cursor.fetchone())[0])


async def copy_rows(pg: Any, source: sqlite3.Connection, table: str, columns: list[str], *,
                    batch_rows: int = BATCH_ROWS) -> int:
    """Stream one table through COPY, `batch_rows` rows in memory at a time; the rows sent."""
    names = ", ".join(f'"{name}"' for name in columns)
    rows = source.execute(f'SELECT {names} FROM "{table}"')
    sent = 0
    async with pg.cursor() as cursor, cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
        while batch := rows.fetchmany(batch_rows):
            for row in batch:
                await copy.write_row(row)
            sent += len(batch)
    return sent


async def copy_artifacts(pg: Any, source: sqlite3.Connection, root: Path, report: MigrationReport) -> int:
    """Each artifact's file into artifact_blobs, one file in memory at a time; the blobs written."""
    written = 0
    for (sha256,) in source.execute("SELECT sha256 FROM artifacts ORDER BY sha256"):
        path = root / sha256[:2] / sha256
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            report.missing_artifacts.append(sha256)
            continue
        if hashlib.sha256(data).hexdigest() != sha256:
            report.corrupt_artifacts.append(sha256)
            continue
        await pg.execute(f"INSERT INTO {ARTIFACT_BLOBS}(sha256, data) VALUES (%s, %s)", [sha256, data])
        report.artifact_bytes += len(data)
        written += 1
    return written


async def advance_sequences(pg: Any, table: str, floor: int) -> None:
    """Move each identity column's sequence past both the copied ids and `floor` (sqlite_sequence)."""
    cursor = await pg.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                              "current_schema() AND table_name = %s AND is_identity = 'YES'", [table])
    for (column,) in await cursor.fetchall():
        top = await (await pg.execute(f'SELECT max("{column}") FROM "{table}"')).fetchone()
        value = max(int(top[0] or 0), floor)
        if value > 0:
            await pg.execute("SELECT setval(pg_get_serial_sequence(%s, %s), %s)", [table, column, value])


async def refuse_unless_empty(pg: Any, tables: list[str]) -> None:
    """Lock the target tables against writers, then refuse if any already holds a row."""
    await pg.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    await pg.execute(f"LOCK TABLE {', '.join(chr(34) + t + chr(34) for t in tables)} IN EXCLUSIVE MODE")
    held = []
    for table in tables:
        if await (await pg.execute(f'SELECT 1 FROM "{table}" LIMIT 1')).fetchone():
            held.append(f"{table}: {await pg_count(pg, table)} rows")
    if held:
        raise MigrationError(f"the target database already holds data ({'; '.join(held)}): migrate-to-postgres "
                             "copies only into an empty database; point DATABASE_URL at a new one (or empty this one)")


async def plan_tables(pg: Any, source: sqlite3.Connection) -> list[tuple[str, list[str]]]:
    """The gateway.db tables to copy with their columns; refuse one PostgreSQL has no place for."""
    plan = []
    for table in sqlite_tables(source):
        columns = sqlite_columns(source, table)
        present = await pg_columns(pg, table)
        missing = [c for c in columns if c not in present]
        if missing:
            where = f"columns {', '.join(missing)} of {table}" if len(missing) < len(columns) else f"table {table}"
            raise MigrationError(f"gateway.db has {where}, which the PostgreSQL schema lacks: this version "
                                 "cannot copy it without losing data (is the bot's code older than the data?)")
        plan.append((table, columns))
    return plan


async def copy_all(pg: Any, gateway: sqlite3.Connection, telemetry: sqlite3.Connection | None,
                   artifacts_dir: Path, report: MigrationReport, *, batch_rows: int = BATCH_ROWS) -> None:
    """Everything, inside the caller's transaction on `pg` (a psycopg AsyncConnection)."""
    plan = await plan_tables(pg, gateway)
    targets = [table for table, _ in plan] + [ARTIFACT_BLOBS, SPAN_BATCHES]
    await refuse_unless_empty(pg, targets)
    expected: dict[str, int] = {}
    for table, columns in plan:
        report.copied[table] = await copy_rows(pg, gateway, table, columns, batch_rows=batch_rows)
        expected[table] = sqlite_count(gateway, table)
    report.copied[ARTIFACT_BLOBS] = expected[ARTIFACT_BLOBS] = await copy_artifacts(
        pg, gateway, artifacts_dir, report)
    report.copied[SPAN_BATCHES] = expected[SPAN_BATCHES] = 0
    if telemetry is not None:
        columns = sqlite_columns(telemetry, SPAN_BATCHES)
        report.copied[SPAN_BATCHES] = await copy_rows(pg, telemetry, SPAN_BATCHES, columns, batch_rows=batch_rows)
        expected[SPAN_BATCHES] = sqlite_count(telemetry, SPAN_BATCHES)
    floors = highest_ids(gateway)
    for table, _ in plan:
        await advance_sequences(pg, table, floors.get(table, 0))
    await check_counts(pg, expected)


async def check_counts(pg: Any, expected: dict[str, int]) -> None:
    wrong = []
    for table, count in expected.items():
        found = await pg_count(pg, table)
        if found != count:
            wrong.append(f"{table}: {count} in SQLite, {found} in PostgreSQL")
    if wrong:
        raise MigrationError(f"counts differ after copying ({'; '.join(wrong)}): nothing was kept (rolled back)")


async def migrate_to_postgres(db: Any, *, gateway_db: Path, telemetry_db: Path, artifacts_dir: Path,
                              batch_rows: int = BATCH_ROWS,
                              progress: Callable[[str], None] = lambda _line: None) -> MigrationReport:
    """Copy the SQLite state into `db` (a connected PostgresDatabase); raises MigrationError."""
    report = MigrationReport()
    with read_only(gateway_db) as gateway:
        check_current(gateway, gateway_migrations, "gateway.db")
        with _telemetry(telemetry_db) as telemetry:
            report.telemetry_found = telemetry is not None
            report.applied_migrations = await migrate_postgres(db)
            if report.applied_migrations:
                progress(f"PostgreSQL schema created ({', '.join(report.applied_migrations)})")
            async with db.pool.connection() as pg, pg.transaction():
                await copy_all(pg, gateway, telemetry, artifacts_dir, report, batch_rows=batch_rows)
    return report


@contextmanager
def _telemetry(path: Path) -> Iterator[sqlite3.Connection | None]:
    """telemetry.db read-only, or None when there is none (a bot that never traced a turn)."""
    if not path.is_file():
        yield None
        return
    with read_only(path) as conn:
        if not sqlite_tables(conn):  # created, never written
            yield None
            return
        check_current(conn, telemetry_migrations, "telemetry.db")
        yield conn
