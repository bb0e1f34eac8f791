"""The two database engines every store runs on: SQLite (the default) and PostgreSQL (DATABASE_URL).

A store is written once, against `Database`: portable SQL with `?` placeholders, awaited. The
engine decides how it runs:

  SQLiteDatabase    one sqlite3 connection in WAL mode; each call runs the statement at once on
                    the event loop's thread (a local commit is well under a millisecond; a thread
                    hop would cost more than the statement), so the SQLite path adds only a
                    coroutine per call to what it did before.
  PostgresDatabase  psycopg 3 with its async pool (`psycopg_pool.AsyncConnectionPool`): a
                    statement outside a transaction takes a pooled connection in autocommit; inside
                    `transaction()` the task's statements share one connection (a ContextVar), so
                    concurrent turns never see each other's uncommitted rows.

Portable SQL means: `?` placeholders; `INSERT ... ON CONFLICT ... DO NOTHING|DO UPDATE` (never
`INSERT OR IGNORE`/`REPLACE`); `excluded.col` and table-qualified columns in `DO UPDATE`;
`COALESCE(SUM(x), 0)` for SQLite's `TOTAL`; `CASE` for booleans in arithmetic; integers 0/1 for
flags; ISO-8601 text for times. New ids come from `insert_id` (`RETURNING id` on PostgreSQL).
What cannot be portable asks `db.dialect`.
"""

from __future__ import annotations

import contextvars
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol, runtime_checkable

import sqlite_utils

Dialect = Literal["sqlite", "postgres"]
Params = Sequence[Any]


@runtime_checkable
class Database(Protocol):
    """What a store needs from its engine."""

    dialect: Dialect

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; the number of rows it changed."""
        ...

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None: ...

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]: ...

    async def insert_id(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT into a table with an `id` key; the new row's id (0 when nothing was
        inserted, e.g. ON CONFLICT DO NOTHING)."""
        ...

    def transaction(self) -> Any:
        """`async with db.transaction():` several statements in one commit; nested use joins."""
        ...

    @property
    def in_transaction(self) -> bool: ...

    async def close(self) -> None: ...


class SQLiteDatabase:
    """The default engine: gateway.db under DATA_DIR (see core/store/db.py for opening it)."""

    dialect: Dialect = "sqlite"

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.sqlite = db  # the sqlite-utils handle: migrations, and code that is SQLite-only
        self.conn: sqlite3.Connection = db.conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(sql, params).fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    async def insert_id(self, sql: str, params: Params = ()) -> int:
        cursor = self.conn.execute(sql, params)
        return int(cursor.lastrowid or 0) if cursor.rowcount == 1 else 0

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        # No statement here truly suspends (sqlite3 is synchronous), so another task cannot run
        # between BEGIN and COMMIT unless the body awaits something else: bodies await only
        # this database.
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    async def close(self) -> None:
        self.conn.close()


_PLACEHOLDER = re.compile(r"'[^']*'|\?|%")


def to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s` (a literal `%` doubled); `?` inside quotes kept."""

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        return "%s" if token == "?" else "%%" if token == "%" else token.replace("%", "%%")

    return _PLACEHOLDER.sub(swap, sql)


class PostgresDatabase:
    """DATABASE_URL: every store's state in PostgreSQL, shared by every instance of the bot."""

    dialect: Dialect = "postgres"

    def __init__(self, pool: Any) -> None:  # psycopg_pool.AsyncConnectionPool
        self.pool = pool
        self._conn: contextvars.ContextVar[Any] = contextvars.ContextVar(f"pg_conn_{id(self)}", default=None)
        self._sql: dict[str, str] = {}

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 10.0,
                      application_name: str = "telegram-llm-gateway") -> PostgresDatabase:
        """Open a pool on `url` (postgres:// accepted) and check one connection works."""
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(normalize_url(url), min_size=min_size, max_size=max_size, open=False,
                                   timeout=timeout_s, name="gateway",
                                   kwargs={"autocommit": True, "application_name": application_name})
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    def _translate(self, sql: str) -> str:
        translated = self._sql.get(sql)
        if translated is None:
            translated = self._sql[sql] = to_pyformat(sql)
        return translated

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        conn = self._conn.get()
        if conn is not None:
            yield conn
            return
        async with self.pool.connection() as conn:
            yield conn

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._connection() as conn:
            cursor = await conn.execute(self._translate(sql), params)
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Params = ()) -> tuple[Any, ...] | None:
        async with self._connection() as conn:
            cursor = await conn.execute(self._translate(sql), params)
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cursor = await conn.execute(self._translate(sql), params)
            return await cursor.fetchall()

    async def insert_id(self, sql: str, params: Params = ()) -> int:
        row = await self.fetchone(f"{sql} RETURNING id", params)
        return int(row[0]) if row else 0

    @property
    def in_transaction(self) -> bool:
        return self._conn.get() is not None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._conn.get() is not None:
            yield
            return
        async with self.pool.connection() as conn, conn.transaction():
            token = self._conn.set(conn)
            try:
                yield
            finally:
                self._conn.reset(token)

    async def close(self) -> None:
        await self.pool.close()


def normalize_url(url: str) -> str:
    """Heroku still hands out `postgres://`; libpq takes both, SQLAlchemy-style tools do not."""
    return "postgresql://" + url.removeprefix("postgres://") if url.startswith("postgres://") else url
