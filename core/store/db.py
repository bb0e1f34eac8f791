"""Opening gateway.db, and what every store shares: counters.

The hot path uses the connection directly with prepared statements: a turn writes a handful of
small rows, and WAL with synchronous=NORMAL keeps each commit well under a millisecond while
surviving a killed process. Transactions are the engine's: `async with db.transaction()`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

from core.store.engine import Database, SQLiteDatabase
from core.store.schema import migrations

GATEWAY_DB = "gateway.db"


def open_database(path: Path | str) -> sqlite_utils.Database:
    """Open (or create) a database in WAL mode and run pending migrations."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5.0)
    db = sqlite_utils.Database(conn)
    if str(path) != ":memory:":
        db.enable_wal()
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    migrations.apply(db)
    return db


def open_sqlite(path: Path | str) -> SQLiteDatabase:
    """`open_database` wrapped as the engine every store takes."""
    return SQLiteDatabase(open_database(path))


async def bump_counter(db: Database, name: str, by: int = 1) -> None:
    await db.execute("INSERT INTO counters(name, value) VALUES (?, ?)"
                     " ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value", [name, by])


async def read_counter(db: Database, name: str) -> int:
    row = await db.fetchone("SELECT value FROM counters WHERE name = ?", [name])
    return int(row[0]) if row else 0
