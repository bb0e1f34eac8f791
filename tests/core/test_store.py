"""Numbered migrations and the journal/history repositories, on in-memory and file databases."""

from __future__ import annotations

from pathlib import Path

from core.store import History, Journal, migrations, open_database

EXPECTED = {
    "journal": {"update_id", "chat_id", "user_id", "kind", "state", "raw", "trace_id", "attempts", "error",
                "received_at", "updated_at"},
    "messages": {"id", "chat_id", "role", "content", "tokens", "trace_id", "update_id", "created_at", "archived"},
    "hot_state": {"chat_id", "state_json", "tokens", "trace_id", "updated_at"},
    "artifacts": {"sha256", "media_type", "size_bytes", "tokens", "created_at"},
    "usage": {"id", "at", "day", "month", "trace_id", "chat_id", "user_id", "model", "input_tokens",
              "output_tokens", "total_tokens", "estimated", "cost_usd", "wasted"},
    "usage_totals": {"scope", "period", "total_tokens", "cost_usd", "attempts"},
    "dlq": {"id", "trace_id", "chat_id", "user_id", "update_id", "inbound_json", "error_kind", "error_message",
            "attempts_json", "first_failed_at", "last_failed_at", "status", "replayable", "replay_trace_id",
            "updated_at"},
    "outbox": {"id", "kind", "chat_id", "text", "parse_mode", "trace_id", "dedupe_key", "status", "attempts",
               "next_attempt_at", "last_error", "created_at", "sent_at"},
}


def test_migrations_create_the_expected_columns() -> None:
    db = open_database(":memory:")
    for table, columns in EXPECTED.items():
        assert set(db[table].columns_dict) == columns, table
    assert [m.name for m in migrations.applied(db)] == [m.name for m in migrations._migrations]


def test_migrations_are_safe_to_rerun(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    open_database(path).close()
    db = open_database(path)
    assert migrations.pending(db) == []
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journal_drops_duplicates_and_lists_unfinished() -> None:
    journal = Journal(open_database(":memory:"))
    assert journal.accept(update_id=1, chat_id=5, user_id=5, kind="update", raw={"update_id": 1}, trace_id=None,
                          now="2026-01-01T00:00:00")
    assert not journal.accept(update_id=1, chat_id=5, user_id=5, kind="update", raw={"update_id": 1},
                              trace_id=None, now="2026-01-01T00:00:01")
    journal.accept(update_id=2, chat_id=5, user_id=5, kind="update", raw={"update_id": 2}, trace_id=None,
                   now="2026-01-01T00:00:02")
    journal.mark(1, "replied", now="2026-01-01T00:00:03")
    assert [e.update_id for e in journal.unfinished()] == [2]
    assert journal.state(1) == "replied"


def test_history_recent_is_bounded_by_tokens_and_ordered() -> None:
    history = History(open_database(":memory:"))
    for index in range(50):
        history.append(chat_id=1, role="user" if index % 2 == 0 else "assistant", content=f"m{index}", tokens=10,
                       trace_id=None, update_id=index, now="2026-01-01T00:00:00")
    recent = history.recent(1, max_tokens=95)
    assert [m.content for m in recent] == [f"m{i}" for i in range(41, 50)]
    assert history.recent(2, max_tokens=1000) == []


def test_failed_turns_find_their_usage_rows_by_index() -> None:
    db = open_database(":memory:")
    plan = [row[3] for row in db.execute(
        "EXPLAIN QUERY PLAN UPDATE usage SET wasted = 1 WHERE trace_id = 'x'").fetchall()]
    assert any("USING INDEX usage_trace" in step for step in plan), plan
