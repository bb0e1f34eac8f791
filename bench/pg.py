"""The benchmark's storage: SQLite under a fresh DATA_DIR (the default) or a fresh PostgreSQL
database, created and dropped by the bench itself (`--database postgres`).

Every measured run gets an empty database of its own, named `bench_<pid>_<random>` on the server
of `--pg-admin-url` (default: the local server, `postgresql://postgres@127.0.0.1:5432/test`; the
admin URL's database is only used to create and drop), so runs never see each other's rows and
nothing is left behind, even when a run fails. The URL's password, if any, is never printed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASES = ("sqlite", "postgres")


def shown(url: str) -> str:
    """`url` without its user part (where a password would be), for reports."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database(admin_url: str = DEFAULT_PG_ADMIN_URL, prefix: str = "bench") -> Iterator[str]:
    """`with fresh_database(url) as database_url:` an empty database for the block, dropped after it
    (WITH FORCE: a bot that did not stop cannot keep it)."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}".lower()
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def storage_env(database: str, admin_url: str) -> Iterator[dict[str, str]]:
    """What a bot's environment gets for one run: nothing for SQLite (DATA_DIR is enough), a
    fresh DATABASE_URL for PostgreSQL."""
    if database == "sqlite":
        yield {}
        return
    with fresh_database(admin_url) as url:
        yield {"DATABASE_URL": url}


def database_size_mb(url: str) -> float:
    """The size of the database at `url` on disk, in MiB."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return float(row[0] if row else 0) / 2**20


def server_cpu(url: str | None) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend process serving the database at `url` (the
    bot's pooled connections), read from /proc: the server runs on this machine. Empty for
    SQLite or a server elsewhere. The difference of two readings is the server's work between them."""
    if not url:
        return {}
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        pids = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone, or not on this machine
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def server_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """The backends' CPU seconds between two readings (a backend that started since counts from zero)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
