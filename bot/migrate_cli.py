"""`python -m bot migrate-to-postgres`: move a SQLite DATA_DIR into the empty database at DATABASE_URL.

Exit status: 0 copied (and checked), 1 refused or a check failed (nothing kept), 2 bad usage
(no DATABASE_URL, no gateway.db in DATA_DIR). The copy itself is core/store/migrate_pg.py. The
URL is shown as host:port/database and user only, never with its password.
"""

from __future__ import annotations

import sqlite3
import sys

from bot.doctor_database import connect_problem, target
from config.settings import Settings
from core.store import GATEWAY_DB
from core.store.migrate_pg import MigrationError, MigrationReport, migrate_to_postgres
from core.tracing import TELEMETRY_DB

PREFIX = "migrate-to-postgres"
SHOWN_MISSING = 5
MAX_ERROR_CHARS = 400


def _fail(message: str, status: int) -> int:
    print(f"{PREFIX}: {message}", file=sys.stderr)
    return status


async def run_migrate_to_postgres(settings: Settings) -> int:
    if settings.database_url is None:
        return _fail("DATABASE_URL is not set: set it to the empty PostgreSQL database to copy into "
                     "(postgresql://USER:PASSWORD@HOST:5432/DATABASE), the one the bot will use", 2)
    data_dir = settings.data_dir
    if not (data_dir / GATEWAY_DB).is_file():
        return _fail(f"no {GATEWAY_DB} in DATA_DIR ({data_dir.resolve()}): set DATA_DIR to the directory the bot "
                     "kept its state in (the volume's mount path)", 2)
    url = settings.database_url.get_secret_value()
    where = target(url)
    import psycopg

    from core.store.engine import PostgresDatabase

    problem = await _connect_problem(url)  # libpq's own words: the pool would only say it timed out
    if problem:
        return _fail(f"{where}: {problem}", 1)
    try:
        db = await PostgresDatabase.connect(url, min_size=1, max_size=2, application_name="gateway-migrate")
    except Exception as error:  # noqa: BLE001
        return _fail(f"{where}: could not open a connection pool ({type(error).__name__}); try again", 1)
    print(f"{PREFIX}: copying {data_dir.resolve()} into {where}")
    try:
        report = await migrate_to_postgres(db, gateway_db=data_dir / GATEWAY_DB,
                                           telemetry_db=data_dir / TELEMETRY_DB,
                                           artifacts_dir=data_dir / "artifacts", progress=print)
    except MigrationError as error:
        return _fail(f"{error}", 1)
    except (sqlite3.Error, OSError) as error:
        return _fail(f"could not read DATA_DIR ({type(error).__name__}: {error}): nothing was kept (rolled back)", 1)
    except psycopg.Error as error:
        said = " ".join(str(error).split())[:MAX_ERROR_CHARS] or type(error).__name__  # COPY quotes the row
        return _fail(f"PostgreSQL refused the copy, nothing was kept (rolled back): {said}", 1)
    finally:
        await db.close()
    _print_report(report, where)
    return 0


async def _connect_problem(url: str) -> str | None:
    """None when one connection opens, else what is wrong and what to fix."""
    import psycopg

    from core.store.engine import normalize_url

    try:
        conn = await psycopg.AsyncConnection.connect(normalize_url(url), connect_timeout=5)
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        detail, fix = connect_problem(error)
        return f"{detail}; fix: {fix}"
    await conn.close()
    return None


def _print_report(report: MigrationReport, where: str) -> None:
    width = max(len(table) for table in report.copied)
    print("copied (table: rows, each count checked against SQLite):")
    for table, rows in report.copied.items():
        print(f"  {table + ':':<{width + 1}} {rows}")
    print(f"artifact bytes: {report.artifact_bytes}")
    if not report.telemetry_found:
        print("telemetry.db: none in DATA_DIR, no spans to copy")
    for label, shas in (("missing on disk", report.missing_artifacts),
                        ("whose bytes no longer match their name", report.corrupt_artifacts)):
        if shas:
            shown = ", ".join(sha[:12] for sha in shas[:SHOWN_MISSING]) + (" …" if len(shas) > SHOWN_MISSING else "")
            print(f"warning: {len(shas)} artifact file(s) {label} ({shown}): their rows are copied without bytes, "
                  "as they were on SQLite (/artifact cannot send them)")
    print(f"done. To switch: run the bot with DATABASE_URL set to this database ({where}) and restart it; "
          "it no longer reads DATA_DIR's SQLite files, so keep them as a backup until /status and a trace look right.")
