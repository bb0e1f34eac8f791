"""Which errors mean the disk or the database refused (full, read-only, I/O, a lock held too long,
PostgreSQL unreachable).

Such a failure is not a bug of the turn, and nothing more can be written until it is fixed: the
taxonomy's `storage_unavailable` (core/failures/taxonomy.py), deferred instead of retried.
"""

from __future__ import annotations

import errno
import sqlite3

import psycopg

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})
# SQLite's primary result codes that mean the disk or the lock, not the SQL: SQLITE_BUSY (5) and
# SQLITE_LOCKED (6) once the busy timeout has run out, SQLITE_READONLY (8), SQLITE_IOERR (10),
# SQLITE_FULL (13), SQLITE_CANTOPEN (14: the file or its directory cannot be opened or created).
STORAGE_SQLITE_CODES = frozenset({5, 6, 8, 10, 13, 14})
# The same, by message, for errors that carry no code (raised by hand, or by a wrapper).
_STORAGE_SQLITE_MESSAGES = ("database or disk is full", "readonly database", "disk i/o error", "database is locked",
                            "database table is locked", "unable to open database file")


# PostgreSQL's SQLSTATEs (and classes, by their first two characters) that mean the server, its
# disk or the connection, not the SQL: connection exceptions (08), insufficient resources (53:
# disk full, out of memory, too many connections), operator intervention (57: shutdown, cannot
# connect now, query canceled), system errors (58: I/O), a read-only transaction (25006, a
# standby) and a lock not available in time (55P03).
STORAGE_PG_CLASSES = frozenset({"08", "53", "57", "58"})
STORAGE_PG_STATES = frozenset({"25006", "55P03"})


def _pg_storage_failure(error: psycopg.Error) -> bool:
    state = error.sqlstate
    if state is None:  # no answer from a server: the connection broke, or the pool timed out
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in STORAGE_PG_CLASSES or state in STORAGE_PG_STATES


def is_storage_failure(error: BaseException) -> bool:
    """The disk or the database refused (full, read-only, I/O error, a lock held too long): not a
    bug of the turn, and nothing more can be written until it is fixed. Any other SQLite error
    (`no such table`, a constraint) is a bug: classified `internal`, so it reaches the DLQ once
    instead of being deferred and retried for ever."""
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in STORAGE_SQLITE_CODES  # extended codes keep the primary in the low byte
        message = str(error).lower()
        return any(marker in message for marker in _STORAGE_SQLITE_MESSAGES)
    if isinstance(error, psycopg.Error):  # PostgreSQL: by SQLSTATE, as SQLite's by result code
        return _pg_storage_failure(error)
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def storage_reason(error: BaseException) -> str:
    """What a storage failure says, in a few words ("No space left on device", "database is
    locked"), without the file name an OSError carries."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, psycopg.Error):  # its first line (the server's detail may follow)
        return (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    return str(error) or type(error).__name__
