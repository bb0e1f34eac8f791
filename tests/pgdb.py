"""Throwaway PostgreSQL databases for tests: each created with a unique name and dropped after.

The server is the machine's PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres), in CI too.
`PG_ADMIN_URL` points elsewhere. Nothing here relies on what another run left.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")


def database_url(name: str) -> str:
    """The URL of database `name` on the admin URL's server."""
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def create_database(prefix: str = "gw") -> str:
    """A new empty database; its URL."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}".lower()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name)


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(prefix: str = "gw") -> Iterator[str]:
    """`with fresh_database() as url:` an empty database for the block, dropped after it."""
    url = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(url)
