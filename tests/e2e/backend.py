"""Where an e2e bot keeps its state, and how a test reads it back: SQLite files under DATA_DIR,
or a throwaway PostgreSQL database given to the bot as DATABASE_URL.

Why one reader for both: the e2e suite runs every bot test on both backends, so a test states
what it expects of the bot's tables once (`backend.query("SELECT ... WHERE x = ?", [x])`) and the
backend decides how to read it. SQL uses `?` placeholders and the portable subset the stores use
(core/store/engine.py). PostgreSQL keeps in one database what SQLite splits in two files
(gateway.db and telemetry.db) and keeps artifact bytes in `artifact_blobs`, not under DATA_DIR.

The PostgreSQL URL carries a random password (trust auth ignores it) so that the fixture's check
"no secret in the bot's output" also proves DATABASE_URL's password never leaks.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql

from core.span_schema import SPAN_FIELDS
from tests import pgdb

__all__ = ["BACKENDS", "Backend", "BackendName", "with_password"]

BackendName = Literal["sqlite", "postgres"]
BACKENDS: tuple[BackendName, ...] = ("sqlite", "postgres")
Store = Literal["gateway", "telemetry"]
_SQLITE_FILES = {"gateway": "gateway.db", "telemetry": "telemetry.db"}


def with_password(url: str, password: str) -> str:
    """`url` with `password` in its user part (a URL that already has one keeps it)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}{port}", parts.path, parts.query, parts.fragment))


class Backend:
    """One test's storage: `Backend.sqlite(data_dir)` or `Backend.postgres(data_dir)` (call `drop()`)."""

    def __init__(self, name: BackendName, data_dir: Path, database_url: str | None = None,
                 password: str | None = None) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.password = password

    @classmethod
    def sqlite(cls, data_dir: Path) -> Backend:
        return cls("sqlite", data_dir)

    @classmethod
    def postgres(cls, data_dir: Path) -> Backend:
        """A new empty database on the test server, its URL carrying a random password."""
        password = f"pw-{secrets.token_hex(8)}"
        return cls("postgres", data_dir, with_password(pgdb.create_database("gw_e2e"), password), password)

    def __repr__(self) -> str:
        return f"<Backend {self.name}>"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What this backend adds to the strings that must never appear in output."""
        return (self.password,) if self.password else ()

    def env(self) -> dict[str, str]:
        """What the bot's environment gets for this backend (nothing for SQLite)."""
        return {"DATABASE_URL": self.database_url} if self.database_url else {}

    def drop(self) -> None:
        """Drop the PostgreSQL database (WITH FORCE: a straggling connection cannot keep it)."""
        if self.database_url:
            pgdb.drop_database(self.database_url)

    # ------------------------------------------------------------------ reading state
    def query(self, sql: str, params: Sequence[Any] = (), *, store: Store = "gateway",
              missing_ok: bool = False) -> list[tuple[Any, ...]]:
        """Rows of `sql` (`?` placeholders). `store` names the SQLite file (gateway.db or
        telemetry.db; one database on PostgreSQL). With `missing_ok`, a database or table that
        does not exist yet (the bot has not migrated) reads as no rows."""
        if self.name == "sqlite":
            return self._sqlite_query(sql, params, store, missing_ok)
        try:
            with psycopg.connect(self._url(), autocommit=True, connect_timeout=10) as conn:
                text = sql.replace("%", "%%").replace("?", "%s")
                return list(conn.execute(text, tuple(params)).fetchall())  # type: ignore[arg-type]
        except psycopg.errors.UndefinedTable:
            if missing_ok:
                return []
            raise

    def records(self, sql: str, params: Sequence[Any] = (), *, store: Store = "gateway") -> list[dict[str, Any]]:
        """Like `query`, each row a dict by column name."""
        if self.name == "sqlite":
            path = self._sqlite_path(store, missing_ok=False)
            with closing(sqlite3.connect(path, timeout=5)) as db:
                db.row_factory = sqlite3.Row
                return [dict(row) for row in db.execute(sql, list(params))]
        with psycopg.connect(self._url(), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(params))  # type: ignore[arg-type]
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def spans(self) -> list[dict[str, Any]]:
        """Every exported span, one dict each (`trace_id` plus core.span_schema.SPAN_FIELDS;
        `attributes` and `events` decoded), batch by batch in the order they were stored."""
        order = "rowid" if self.name == "sqlite" else "start_ns"
        batches = self.query(f"SELECT trace_id, spans FROM span_batches ORDER BY {order}", store="telemetry",
                             missing_ok=True)
        found = []
        for trace_id, blob in batches:
            for values in json.loads(blob):
                span = {"trace_id": trace_id, **dict(zip(SPAN_FIELDS, values, strict=True))}
                for field in ("attributes", "events"):
                    if isinstance(span[field], str):
                        span[field] = json.loads(span[field])
                found.append(span)
        return found

    def artifacts(self) -> dict[str, bytes]:
        """The stored artifact bytes by SHA-256: files under DATA_DIR/artifacts on SQLite,
        `artifact_blobs` rows on PostgreSQL."""
        if self.name == "postgres":
            return {sha: bytes(data) for sha, data in self.query("SELECT sha256, data FROM artifact_blobs")}
        root = self.data_dir / "artifacts"
        files = root.rglob("*") if root.exists() else iter(())
        return {p.name: p.read_bytes() for p in files if p.is_file() and not p.name.startswith(".")}

    def artifact(self, ref: str) -> bytes:
        """The bytes of the one artifact whose SHA-256 starts with `ref` (`artifact://` optional)."""
        prefix = ref.removeprefix("artifact://")
        found = [data for sha, data in self.artifacts().items() if sha.startswith(prefix)]
        assert len(found) == 1, f"{ref}: {len(found)} stored artifacts match"
        return found[0]

    def stored(self) -> Iterator[tuple[str, bytes]]:
        """Everything the bot stored, as (where, bytes): every file under DATA_DIR and, on
        PostgreSQL, every table's rows as text (for "no secret reaches storage")."""
        for path in sorted(self.data_dir.rglob("*")):
            if path.is_file():
                yield str(path), path.read_bytes()
        if self.name != "postgres":
            return
        with psycopg.connect(self._url(), autocommit=True) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
            for table in tables:
                rows = conn.execute(pgsql.SQL("SELECT t::text FROM {} t").format(pgsql.Identifier(table)))
                yield f"table {table}", "\n".join(row[0] for row in rows).encode()

    # ------------------------------------------------------------------ internals
    def _url(self) -> str:
        assert self.database_url, "not a PostgreSQL backend"
        return self.database_url

    def _sqlite_path(self, store: Store, *, missing_ok: bool) -> Path | None:
        path = self.data_dir / _SQLITE_FILES[store]
        if path.is_file():
            return path
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path} does not exist (has the bot started?)")

    def _sqlite_query(self, sql: str, params: Sequence[Any], store: Store,
                      missing_ok: bool) -> list[tuple[Any, ...]]:
        path = self._sqlite_path(store, missing_ok=missing_ok)
        if path is None:
            return []
        with closing(sqlite3.connect(path, timeout=5)) as db:
            try:
                return db.execute(sql, list(params)).fetchall()
            except sqlite3.OperationalError as exc:
                if missing_ok and "no such table" in str(exc):
                    return []
                raise
