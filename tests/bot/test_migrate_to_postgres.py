"""`python -m bot migrate-to-postgres`, run as a process, on a DATA_DIR built with the SQLite schema
(plain SQL, not the stores), against a database of its own on the machine's PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from core.span_schema import migrations as telemetry_migrations
from core.store import open_database
from core.store.schema import migrations as gateway_migrations
from tests.pgdb import database_url, fresh_database

PASSWORD = "Sup3r-Secret-pw-4711"
NOW = "2026-11-29T12:00:00+00:00"
MESSAGES = 2500  # more than one COPY batch (core.store.migrate_pg.BATCH_ROWS)
KEPT = b"the quarterly report, as a user sent it\n" * 40
LOST_SHA = hashlib.sha256(b"a file the volume lost").hexdigest()
ROOT = Path(__file__).resolve().parents[2]


def with_password(url: str) -> str:
    """The same database with a password in the URL (trust auth ignores it; it must never be printed)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@", 1)


def run_cli(data_dir: Path, database: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))
    if database is not None:
        env["DATABASE_URL"] = database
    result = subprocess.run([sys.executable, "-m", "bot", "migrate-to-postgres"], env=env, cwd=data_dir.parent,
                            capture_output=True, text=True, timeout=120, check=False)
    assert PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def populate(data_dir: Path) -> dict[str, int]:
    """A DATA_DIR as a bot leaves it: gateway.db rows, artifact files, telemetry.db; its row counts."""
    db = open_database(data_dir / "gateway.db")
    sql = db.execute
    sql("INSERT INTO journal VALUES (1001, 7, 70, 'message', 'done', '{}', 'ab0', 0, NULL, ?, ?)", [NOW, NOW])
    sql("INSERT INTO journal VALUES (1002, 7, 70, 'message', 'done', '{}', NULL, 1, 'boom', ?, ?)", [NOW, NOW])
    db.conn.executemany("INSERT INTO messages(chat_id, role, content, tokens, created_at) VALUES (7, ?, ?, 3, ?)",
                        [("user" if i % 2 else "assistant", f"message {i}", NOW) for i in range(MESSAGES)])
    sql("DELETE FROM messages WHERE id = ?", [MESSAGES])  # the highest id ever handed out stays taken
    sql("INSERT INTO chats(chat_id, updated_at) VALUES (7, ?)", [NOW])
    sql("INSERT INTO hot_state VALUES (7, '{\"facts\": []}', 5, NULL, ?)", [NOW])
    kept_sha = hashlib.sha256(KEPT).hexdigest()
    for sha in (kept_sha, LOST_SHA):
        sql("INSERT INTO artifacts VALUES (?, 'text/plain', 10, 3, ?)", [sha, NOW])
        sql("INSERT INTO artifact_links VALUES (?, 7, 70, 'report', 'a report', 'document', NULL, ?)", [sha, NOW])
    (data_dir / "artifacts" / kept_sha[:2]).mkdir(parents=True)
    (data_dir / "artifacts" / kept_sha[:2] / kept_sha).write_bytes(KEPT)
    sql("""INSERT INTO usage(at, day, month, chat_id, user_id, model, input_tokens, output_tokens, total_tokens,
           estimated, cost_usd, wasted) VALUES (?, '2026-11-29', '2026-11', 7, 70, 'gpt-4o-mini', 10, 5, 15, 0, 0.25, 0)""",
        [NOW])
    sql("INSERT INTO usage_totals VALUES ('all', '2026-11', 15, 0.25, 1)")
    sql("""INSERT INTO dlq(id, trace_id, inbound_json, error_kind, error_message, attempts_json, first_failed_at,
           last_failed_at, status, replayable, updated_at) VALUES (41, 't', '{}', 'llm_timeout', 'timed out', '[]',
           ?, ?, 'pending', 1, ?)""", [NOW, NOW, NOW])
    sql("""INSERT INTO outbox(kind, chat_id, text, dedupe_key, status, next_attempt_at, created_at)
           VALUES ('alert', 1, 'circuit open', 'k1', 'sent', ?, ?)""", [NOW, NOW])
    sql("INSERT INTO counters VALUES ('spoken_sent', 3)")
    sql("INSERT INTO access_subjects VALUES (70, 'user', 'allowed', 'Ann', 'ann', 'operator', ?)", [NOW])
    db.conn.close()
    telemetry = sqlite_utils.Database(data_dir / "telemetry.db")
    telemetry_migrations.apply(telemetry)
    telemetry.execute("INSERT INTO span_batches VALUES ('ab0', 1, 9, 2, 'turn', 1, 9, 'OK', 7, NULL, '[]')")
    telemetry.conn.close()
    return {"journal": 2, "messages": MESSAGES - 1, "chats": 1, "hot_state": 1, "artifacts": 2, "artifact_links": 2,
            "usage": 1, "usage_totals": 1, "dlq": 1, "outbox": 1, "counters": 1, "access_subjects": 1,
            "artifact_blobs": 1, "span_batches": 1, "prompt_metrics": 0, "voice_replies": 0}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def test_copies_everything_keeps_ids_and_advances_sequences(data_dir: Path) -> None:
    expected = populate(data_dir)
    with fresh_database("gw_ops_mig") as url:
        result = run_cli(data_dir, with_password(url))
        assert result.returncode == 0, result.stdout + result.stderr
        for table, rows in expected.items():
            assert any(line.split() == [f"{table}:", str(rows)] for line in result.stdout.splitlines()), table
        assert f"1 artifact file(s) missing on disk ({LOST_SHA[:12]})" in result.stdout
        assert "DATABASE_URL" in result.stdout and "restart" in result.stdout
        with psycopg.connect(url, autocommit=True) as pg:
            for table, rows in expected.items():
                assert pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows, table
            ids = [row[0] for row in pg.execute("SELECT id FROM messages ORDER BY id")]
            assert ids == list(range(1, MESSAGES))
            assert pg.execute("SELECT content FROM messages WHERE id = 2").fetchone()[0] == "message 1"
            blob = pg.execute("SELECT data FROM artifact_blobs").fetchone()[0]
            assert bytes(blob) == KEPT
            assert pg.execute("SELECT cost_usd FROM usage").fetchone()[0] == 0.25
            assert pg.execute("SELECT spans, root_name FROM span_batches").fetchone() == ("[]", "turn")
            # New rows without an id go past every id SQLite handed out (the deleted last one too).
            new_id = pg.execute("INSERT INTO messages(chat_id, role, content, tokens, created_at) "
                                "VALUES (7, 'user', 'after', 1, 'now') RETURNING id").fetchone()[0]
            assert new_id == MESSAGES + 1
            new_dlq = pg.execute("""INSERT INTO dlq(trace_id, inbound_json, error_kind, error_message, attempts_json,
                first_failed_at, last_failed_at, status, replayable, updated_at)
                VALUES ('u', '{}', 'k', 'm', '[]', 'a', 'a', 'pending', 1, 'a') RETURNING id""").fetchone()[0]
            assert new_dlq == 42
        # The target is no longer empty: a second run refuses and changes nothing.
        again = run_cli(data_dir, with_password(url))
        assert again.returncode == 1
        assert "already holds data" in again.stderr and "messages:" in again.stderr
        with psycopg.connect(url, autocommit=True) as pg:
            assert pg.execute("SELECT count(*) FROM messages").fetchone()[0] == MESSAGES


def test_a_failed_copy_keeps_nothing(data_dir: Path) -> None:
    populate(data_dir)
    db = open_database(data_dir / "gateway.db")
    db.execute("PRAGMA foreign_keys=OFF")  # a link to an artifact that is not there: PostgreSQL refuses it
    db.execute("INSERT INTO artifact_links VALUES (?, 8, 80, 'x', 'x', 'document', NULL, ?)", ["f" * 64, NOW])
    db.conn.close()
    with fresh_database("gw_ops_mig") as url:
        result = run_cli(data_dir, with_password(url))
        assert result.returncode == 1
        assert "nothing was kept" in result.stderr
        with psycopg.connect(url, autocommit=True) as pg:
            for table in ("journal", "messages", "artifacts", "artifact_links", "artifact_blobs", "span_batches"):
                assert pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table


def test_refuses_a_data_dir_whose_migrations_are_behind_without_touching_it(data_dir: Path) -> None:
    db = sqlite_utils.Database(data_dir / "gateway.db")
    gateway_migrations.apply(db, stop_before="m009_voice_replies")
    db.conn.close()
    with fresh_database("gw_ops_mig") as url:
        result = run_cli(data_dir, with_password(url))
    assert result.returncode == 1
    assert "behind this version" in result.stderr and "m009_voice_replies" in result.stderr
    db = sqlite_utils.Database(data_dir / "gateway.db")
    assert [m.name for m in gateway_migrations.pending(db)] == ["m009_voice_replies"]  # read-only: unchanged
    db.conn.close()


def test_bad_usage_and_an_unreachable_server(data_dir: Path) -> None:
    no_url = run_cli(data_dir, None)
    assert no_url.returncode == 2 and "DATABASE_URL is not set" in no_url.stderr
    with_url = run_cli(data_dir, with_password(database_url("whatever")))
    assert with_url.returncode == 2 and "no gateway.db in DATA_DIR" in with_url.stderr
    populate(data_dir)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = run_cli(data_dir, f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/nothing")
    assert closed.returncode == 1
    assert f"127.0.0.1:{port}/nothing as postgres: cannot reach the server" in closed.stderr
    assert "check the host and port" in closed.stderr
