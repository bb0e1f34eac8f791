"""Opening gateway.db, and what every SQLite repository shares: transactions and counters.

The hot path uses the connection directly with prepared statements: a turn writes a handful of
small rows, and WAL with synchronous=NORMAL keeps each commit well under a millisecond while
surviving a killed process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

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


def bump_counter(db: sqlite_utils.Database, name: str, by: int = 1) -> None:
    db.execute("INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
               [name, by, by])


def read_counter(db: sqlite_utils.Database, name: str) -> int:
    row = db.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
    return int(row[0]) if row else 0


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """Several writes in one commit (a WAL commit costs more than the writes it carries).
    Nested use joins the outer transaction."""
    if db.conn.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
