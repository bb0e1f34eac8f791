"""The SQLite schema of gateway.db: numbered migrations, run at start by `open_database`.

sqlite-utils 4 records each applied migration in `_sqlite_migrations`, so running them again is
safe. A migration is never edited once shipped: a change of schema is a new numbered function.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("gateway")


@migrations()
def m001_journal_history(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE journal (
        update_id INTEGER PRIMARY KEY, chat_id INTEGER, user_id INTEGER, kind TEXT NOT NULL,
        state TEXT NOT NULL, raw TEXT NOT NULL, trace_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT, received_at TEXT NOT NULL, updated_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX journal_state ON journal(state) WHERE state IN ('received','processing')")
    db.execute("""CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT, chat_id INTEGER NOT NULL, role TEXT NOT NULL,
        content TEXT NOT NULL, tokens INTEGER NOT NULL, trace_id TEXT, update_id INTEGER,
        created_at TEXT NOT NULL, archived INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE INDEX messages_chat ON messages(chat_id, archived, id)")
    db.execute("""CREATE TABLE chats (
        chat_id INTEGER PRIMARY KEY, blocked_at TEXT, blocked_reason TEXT,
        last_prompt_tokens INTEGER, last_prompt_budget INTEGER, last_trace_id TEXT, updated_at TEXT)""")


@migrations()
def m002_context(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE hot_state (
        chat_id INTEGER PRIMARY KEY, state_json TEXT NOT NULL, tokens INTEGER NOT NULL,
        trace_id TEXT, updated_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE artifacts (
        sha256 TEXT PRIMARY KEY, media_type TEXT NOT NULL, size_bytes INTEGER NOT NULL,
        tokens INTEGER, created_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE artifact_links (
        sha256 TEXT NOT NULL REFERENCES artifacts(sha256), chat_id INTEGER NOT NULL,
        user_id INTEGER, label TEXT NOT NULL, summary TEXT NOT NULL, kind TEXT NOT NULL,
        trace_id TEXT, created_at TEXT NOT NULL, PRIMARY KEY (chat_id, sha256))""")
    db.execute("""CREATE TABLE prompt_metrics (
        trace_id TEXT PRIMARY KEY, chat_id INTEGER NOT NULL, at TEXT NOT NULL,
        hot_state_tokens INTEGER, history_tokens INTEGER, history_kept INTEGER,
        history_dropped INTEGER, artifact_count INTEGER, total_tokens INTEGER, budget_tokens INTEGER)""")


@migrations()
def m003_usage(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE usage (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, day TEXT NOT NULL, month TEXT NOT NULL,
        trace_id TEXT, chat_id INTEGER, user_id INTEGER, model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL,
        estimated INTEGER NOT NULL, cost_usd REAL, wasted INTEGER NOT NULL)""")
    db.execute("CREATE INDEX usage_user_day ON usage(user_id, day)")
    db.execute("CREATE INDEX usage_month ON usage(month)")
    db.execute("CREATE TABLE warnings (key TEXT PRIMARY KEY, at TEXT NOT NULL)")


@migrations()
def m004_failures(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE dlq (
        id INTEGER PRIMARY KEY AUTOINCREMENT, trace_id TEXT NOT NULL, chat_id INTEGER, user_id INTEGER,
        update_id INTEGER, inbound_json TEXT NOT NULL, error_kind TEXT NOT NULL, error_message TEXT NOT NULL,
        attempts_json TEXT NOT NULL, first_failed_at TEXT NOT NULL, last_failed_at TEXT NOT NULL,
        status TEXT NOT NULL, replayable INTEGER NOT NULL, replay_trace_id TEXT, updated_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX dlq_status ON dlq(status, id)")
    db.execute("""CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, chat_id INTEGER NOT NULL,
        text TEXT NOT NULL, parse_mode TEXT, trace_id TEXT, dedupe_key TEXT UNIQUE,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at TEXT NOT NULL,
        last_error TEXT, created_at TEXT NOT NULL, sent_at TEXT)""")
    db.execute("CREATE INDEX outbox_pending ON outbox(status, next_attempt_at)")
    db.execute("""CREATE TABLE alert_state (
        key TEXT PRIMARY KEY, last_sent_at TEXT NOT NULL, suppressed INTEGER NOT NULL DEFAULT 0)""")
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


@migrations()
def m005_usage_totals(db: sqlite_utils.Database) -> None:
    """Running totals the budget check reads on every turn (a user's day, the bot's month), so
    its cost does not grow with the number of usage rows in the period."""
    db.execute("""CREATE TABLE usage_totals (
        scope TEXT NOT NULL, period TEXT NOT NULL, total_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (scope, period))""")
    db.execute("""INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts)
        SELECT 'user:' || user_id, day, SUM(total_tokens), TOTAL(cost_usd), COUNT(*) FROM usage GROUP BY user_id, day""")
    db.execute("""INSERT INTO usage_totals(scope, period, total_tokens, cost_usd, attempts)
        SELECT 'all', month, SUM(total_tokens), TOTAL(cost_usd), COUNT(*) FROM usage GROUP BY month""")


@migrations()
def m006_usage_by_trace(db: sqlite_utils.Database) -> None:
    """A failed turn marks its attempts wasted by trace id: an index, not a scan of all usage."""
    db.execute("CREATE INDEX usage_trace ON usage(trace_id)")


@migrations()
def m007_models_chat_model(db: sqlite_utils.Database) -> None:
    """/model: the model a chat chose (no row: the default, LLM_MODEL)."""
    db.execute("""CREATE TABLE chat_models (
        chat_id INTEGER PRIMARY KEY, model TEXT NOT NULL, updated_at TEXT NOT NULL)""")


@migrations()
def m008_access(db: sqlite_utils.Database) -> None:
    """Pairing (ACCESS_POLICY): the operator's decisions per user or group, the pairing codes
    strangers were given, and the inline buttons an outbox message carries (alerts, requests)."""
    db.execute("""CREATE TABLE access_subjects (
        subject_id INTEGER PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, name TEXT NOT NULL,
        username TEXT, decided_by TEXT NOT NULL, decided_at TEXT NOT NULL)""")
    db.execute("""CREATE TABLE pairing_codes (
        code TEXT PRIMARY KEY, subject_id INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
        username TEXT, status TEXT NOT NULL, created_at TEXT NOT NULL, expires_at TEXT NOT NULL)""")
    db.execute("CREATE INDEX pairing_codes_subject ON pairing_codes(subject_id, created_at)")
    db.execute("CREATE INDEX pairing_codes_pending ON pairing_codes(status, expires_at)")
    db.execute("ALTER TABLE outbox ADD COLUMN reply_markup TEXT")


@migrations()
def m009_voice_replies(db: sqlite_utils.Database) -> None:
    """/voice on|off: the chats that asked for spoken answers (no row: off)."""
    db.execute("CREATE TABLE voice_replies (chat_id INTEGER PRIMARY KEY, updated_at TEXT NOT NULL)")
