"""doctor's database checks: with DATABASE_URL, is it reachable, current and writable; without it,
is DATA_DIR somewhere a platform wipes.

`Check` (one line of doctor's report) lives here, below bot/doctor.py, which imports it with the
checks. The URL is never shown whole: only
host, port, database and user (its password is not in any line here, and doctor redacts anyway).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

from config.settings import Settings
from core.store.engine import normalize_url, to_pyformat
from core.store.pg_schema import pending_migrations

CONNECT_TIMEOUT_S = 5


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False


def target(url: str) -> str:
    """`host:port/database as user`: what doctor and migrate-to-postgres show of DATABASE_URL."""
    parsed = urlparse(normalize_url(url))
    database = unquote(parsed.path.lstrip("/")) or "(default database)"
    user = f" as {unquote(parsed.username)}" if parsed.username else ""
    return f"{parsed.hostname or 'localhost'}:{parsed.port or 5432}/{database}{user}"


def connect_problem(error: BaseException) -> tuple[str, str]:
    """What a failed connection means and what to fix, from libpq's message: (detail, fix)."""
    message = " ".join(str(error).split()) or type(error).__name__
    lowered = message.lower()
    if "password" in lowered or ("role" in lowered and "does not exist" in lowered) or "pg_hba" in lowered:
        return (f"authentication failed: {message}",
                "check the user and password in DATABASE_URL (copy the URL again from the platform)")
    if "database" in lowered and "does not exist" in lowered:
        return (f"database missing: {message}",
                "create the database (createdb NAME) or fix the name at the end of DATABASE_URL")
    if "too many" in lowered or "remaining connection slots" in lowered:
        return (f"no connection slot free: {message}",
                "the plan's connection limit is reached: stop other clients or use a bigger plan")
    if "ssl" in lowered:
        return (f"TLS problem: {message}", "add ?sslmode=require to DATABASE_URL (external URLs need TLS)")
    return (f"cannot reach the server: {message}",
            "check the host and port in DATABASE_URL and that the database is running (on Render use the "
            "Internal Database URL, from a service in the same region)")


class _OneConnection:
    """The slice of the Database protocol pending_migrations reads, over one psycopg connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def fetchone(self, sql: str, params: Any = ()) -> Any:
        return await (await self.conn.execute(to_pyformat(sql), params)).fetchone()

    async def fetchall(self, sql: str, params: Any = ()) -> Any:
        return await (await self.conn.execute(to_pyformat(sql), params)).fetchall()


async def check_database(url: str) -> list[Check]:
    """Reachable, migrations current, the role may create tables."""
    import psycopg

    where = target(url)
    try:
        conn = await psycopg.AsyncConnection.connect(normalize_url(url), connect_timeout=CONNECT_TIMEOUT_S,
                                                     autocommit=True, application_name="gateway-doctor")
    except Exception as error:  # noqa: BLE001 - any failure is the finding
        detail, fix = connect_problem(error)
        return [Check("database", False, f"{where}: {detail}", fix)]
    try:
        version = (await (await conn.execute("SHOW server_version")).fetchone())[0]
        findings = [Check("database", True, f"{where} reachable (PostgreSQL {version})")]
        pending = await pending_migrations(_OneConnection(conn))
        may_create = await _may_create(conn)
        findings.append(_migrations_finding(pending, may_create))
        findings.append(_privilege_finding(may_create, pending))
        return findings
    except Exception as error:  # noqa: BLE001
        return [Check("database", False, f"{where}: {type(error).__name__}: {error}",
                        "check that DATABASE_URL names a PostgreSQL database this role may read")]
    finally:
        await conn.close()


async def _may_create(conn: Any) -> tuple[str, str | None, bool, bool]:
    """(role, schema, CREATE on that schema: new tables, CREATE on the database: new schemas)."""
    row = await (await conn.execute(
        "SELECT current_user, current_schema(), "
        "COALESCE(has_schema_privilege(current_user, current_schema(), 'CREATE'), false), "
        "has_database_privilege(current_user, current_database(), 'CREATE')")).fetchone()
    return row[0], row[1], bool(row[2]), bool(row[3])


def _migrations_finding(pending: list[str], may_create: tuple[str, str | None, bool, bool]) -> Check:
    if not pending:
        return Check("migrations", True, "PostgreSQL schema current")
    detail = f"{len(pending)} pending ({', '.join(pending)}): they run at the next start"
    if not may_create[2]:
        return Check("migrations", False, detail + ", but this role may not create tables",
                       "see the privileges line below")
    return Check("migrations", True, detail, warning=True)


def _privilege_finding(may_create: tuple[str, str | None, bool, bool], pending: list[str]) -> Check:
    role, schema, on_schema, on_database = may_create
    if schema is None:
        return Check("privileges", False, f"role {role} has no schema on its search_path",
                       "create one (CREATE SCHEMA) or set search_path to a schema the role owns")
    if on_schema:
        return Check("privileges", True, f"role {role} may create tables in schema {schema}"
                       + ("" if on_database else " (not schemas in the database: not needed)"))
    grant = f"as the database owner: GRANT CREATE ON SCHEMA {schema} TO {role}; or use the owner's URL"
    if pending:
        return Check("privileges", False, f"role {role} may not create tables in schema {schema}: "
                       "the bot cannot apply its migrations", grant)
    return Check("privileges", True, f"role {role} may not create tables in schema {schema}: fine today, "
                   "a later version's migrations will need it", grant, warning=True)


# Which platform wipes DATA_DIR, from the variables each sets in every process (their docs):
#   Heroku  DYNO (the dyno's name); the dyno filesystem is discarded at every restart, at least daily.
#   Render  RENDER ("true"); without a persistent disk mounted at DATA_DIR, files go with each deploy.
#   Railway RAILWAY_PROJECT_ID / RAILWAY_SERVICE_ID / RAILWAY_ENVIRONMENT_NAME; a volume attached to
#           the service sets RAILWAY_VOLUME_MOUNT_PATH (its mount path).
#   Fly     FLY_APP_NAME / FLY_MACHINE_ID; a volume is a mount ([mounts] destination in fly.toml).
_RAILWAY = ("RAILWAY_PROJECT_ID", "RAILWAY_SERVICE_ID", "RAILWAY_ENVIRONMENT_NAME")
_FLY = ("FLY_APP_NAME", "FLY_MACHINE_ID")
_USE_POSTGRES = "or set DATABASE_URL to a PostgreSQL database (README, Deploying with PostgreSQL)"


def on_mount(path: Path, is_mount: Callable[[str], bool] = os.path.ismount) -> bool:
    """Whether `path` (or the nearest of its parents) lies on a mounted volume, not the root filesystem."""
    current = Path(os.path.abspath(path))
    for candidate in (current, *current.parents):
        if str(candidate) != "/" and is_mount(str(candidate)):
            return True
    return False


def check_data_dir(settings: Settings, environ: Mapping[str, str] = os.environ,
                   is_mount: Callable[[str], bool] = os.path.ismount) -> Check | None:
    """A warning when state would live on a disk the platform wipes (only without DATABASE_URL)."""
    if settings.database_url is not None:
        return None
    data_dir = settings.data_dir
    if environ.get("DYNO"):
        return Check("platform", False, "Heroku detected (DYNO is set): the dyno's disk is ephemeral, wiped at every "
                       "restart and at least daily, so history, artifacts, the DLQ and usage in DATA_DIR are lost",
                       "add Heroku Postgres (heroku addons:create heroku-postgresql:essential-0): it sets "
                       "DATABASE_URL", warning=True)
    if environ.get("RENDER") and not on_mount(data_dir, is_mount):
        return Check("platform", False, f"Render detected (RENDER is set) and DATA_DIR {data_dir} is not on a "
                       "persistent disk: it is wiped at every deploy and restart",
                       f"attach a disk and set DATA_DIR to its mount path, {_USE_POSTGRES}", warning=True)
    if any(environ.get(name) for name in _RAILWAY):
        volume = environ.get("RAILWAY_VOLUME_MOUNT_PATH")
        if not volume or not Path(os.path.abspath(data_dir)).is_relative_to(os.path.abspath(volume)):
            where = (f"DATA_DIR {data_dir} is not under the service's volume ({volume})" if volume
                     else "the service has no volume (RAILWAY_VOLUME_MOUNT_PATH is not set)")
            return Check("platform", False, f"Railway detected and {where}: DATA_DIR is wiped at every deploy",
                           f"attach a volume and set DATA_DIR to its mount path, {_USE_POSTGRES}", warning=True)
    if any(environ.get(name) for name in _FLY) and not on_mount(data_dir, is_mount):
        return Check("platform", False, f"Fly detected (FLY_APP_NAME is set) and DATA_DIR {data_dir} is not on a "
                       "mounted volume: a Machine's root filesystem is ephemeral (reset from the image)",
                       f"create a volume, mount it ([mounts] in fly.toml) and set DATA_DIR there, {_USE_POSTGRES}",
                       warning=True)
    return None


async def database_findings(settings: Settings, environ: Mapping[str, str] = os.environ) -> list[Check]:
    """What doctor prints about storage beyond gateway.db: the database, or DATA_DIR's platform."""
    if settings.database_url is not None:
        return await check_database(settings.database_url.get_secret_value())
    warning = check_data_dir(settings, environ)
    return [warning] if warning else []
