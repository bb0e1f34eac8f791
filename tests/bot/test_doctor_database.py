"""doctor's database checks against the machine's PostgreSQL, and its ephemeral-disk warnings."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from bot.doctor_database import (
    Check,
    check_data_dir,
    check_database,
    connect_problem,
    database_findings,
    target,
)
from config.settings import Settings
from core.store.engine import PostgresDatabase
from core.store.pg_schema import MIGRATIONS, migrate_postgres
from tests.pgdb import database_url, fresh_database

PASSWORD = "Doctor-Secret-pw-99"


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def by_name(findings: list[Check]) -> dict[str, Check]:
    return {finding.name: finding for finding in findings}


def no_password(findings: list[Check]) -> None:
    assert all(PASSWORD not in " ".join(map(str, finding)) for finding in findings)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_fresh_database_is_reachable_with_its_migrations_pending() -> None:
    with fresh_database("gw_ops_doc") as url:
        findings = await check_database(with_password(url))
        no_password(findings)
        found = by_name(findings)
        assert found["database"].ok and "reachable (PostgreSQL 15" in found["database"].detail
        assert found["database"].detail.startswith(f"127.0.0.1:5432/{url.rpartition('/')[2]} as postgres")
        pending = found["migrations"]
        assert pending.ok and pending.warning
        assert pending.detail.startswith(f"{len(MIGRATIONS)} pending (p001_gateway")
        assert "they run at the next start" in pending.detail
        assert found["privileges"].ok and not found["privileges"].warning
        assert "may create tables in schema public" in found["privileges"].detail


async def test_a_migrated_database_is_current() -> None:
    with fresh_database("gw_ops_doc") as url:
        db = await PostgresDatabase.connect(url)
        try:
            await migrate_postgres(db)
        finally:
            await db.close()
        found = by_name(await check_database(url))
        assert found["migrations"] == Check("migrations", True, "PostgreSQL schema current")


async def test_a_role_without_create_cannot_migrate() -> None:
    role = f"gw_ops_reader_{closed_port()}"
    with fresh_database("gw_ops_doc") as url:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN")
            admin.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        try:
            reader_url = url.replace("postgresql://postgres@", f"postgresql://{role}@", 1)
            found = by_name(await check_database(reader_url))
            assert not found["migrations"].ok and "may not create tables" in found["migrations"].detail
            assert not found["privileges"].ok
            assert f"GRANT CREATE ON SCHEMA public TO {role}" in found["privileges"].fix
        finally:
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute(f"DROP OWNED BY {role}")
                admin.execute(f"DROP ROLE {role}")


async def test_an_unreachable_server_says_what_to_fix() -> None:
    port = closed_port()
    findings = await check_database(f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/gw")
    no_password(findings)
    [finding] = findings
    assert not finding.ok and not finding.warning
    assert finding.detail.startswith(f"127.0.0.1:{port}/gw as postgres: cannot reach the server")
    assert "check the host and port in DATABASE_URL" in finding.fix


async def test_a_missing_database_is_named() -> None:
    [finding] = await check_database(with_password(database_url("gw_ops_doc_never_created")))
    assert not finding.ok and "database missing" in finding.detail
    assert "createdb" in finding.fix


def test_connect_problem_classifies_libpq_messages() -> None:
    assert connect_problem(Exception('FATAL:  password authentication failed for user "bot"'))[0].startswith(
        "authentication failed")
    assert connect_problem(Exception('FATAL:  role "bot" does not exist'))[0].startswith("authentication failed")
    assert connect_problem(Exception("FATAL:  sorry, too many clients already"))[0].startswith("no connection slot")
    assert target("postgres://u:p%40ss@db.example.com/app") == "db.example.com:5432/app as u"


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", **values)  # type: ignore[call-arg]


def never_mounted(_path: str) -> bool:
    return False


@pytest.mark.parametrize(("environ", "said"), [
    ({"DYNO": "web.1"}, "Heroku detected"),
    ({"RENDER": "true"}, "Render detected"),
    ({"RAILWAY_PROJECT_ID": "p1"}, "the service has no volume"),
    ({"RAILWAY_PROJECT_ID": "p1", "RAILWAY_VOLUME_MOUNT_PATH": "/somewhere/else"}, "not under the service's volume"),
    ({"FLY_APP_NAME": "gateway"}, "Fly detected"),
])
def test_ephemeral_data_dir_warns_without_database_url(tmp_path: Path, environ: dict[str, str], said: str) -> None:
    finding = check_data_dir(settings(tmp_path), environ, is_mount=never_mounted)
    assert finding is not None and finding.warning and said in finding.detail
    assert "DATABASE_URL" in finding.fix
    # With DATABASE_URL there is nothing on DATA_DIR to lose.
    assert check_data_dir(settings(tmp_path, database_url="postgresql://u@h/db"), environ,
                          is_mount=never_mounted) is None


def test_persistent_data_dir_is_fine(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert check_data_dir(settings(tmp_path), {}, is_mount=never_mounted) is None  # not on a PaaS
    for environ in ({"RENDER": "true"}, {"FLY_APP_NAME": "gateway"}):
        assert check_data_dir(settings(tmp_path), environ, is_mount=lambda path: path == data) is None
    volume = {"RAILWAY_SERVICE_ID": "s1", "RAILWAY_VOLUME_MOUNT_PATH": str(tmp_path)}
    assert check_data_dir(settings(tmp_path), volume, is_mount=never_mounted) is None


async def test_database_findings_pick_the_check(tmp_path: Path) -> None:
    port = closed_port()
    with_url = settings(tmp_path, database_url=f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/gw")
    [finding] = await database_findings(with_url, {"DYNO": "web.1"})
    assert finding.name == "database" and not finding.ok
    assert await database_findings(settings(tmp_path), {}) == []
