"""The layout of telemetry.db: numbered migrations (sqlite-utils), run when the exporter opens it.

One row of `span_batches` per trace per export batch, its spans as a JSON array in `spans`
(fields in SPAN_FIELDS order), plus the columns queries need without opening the JSON. The
`spans` and `turns` views show them one per row for people browsing the file (Datasette).
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

# The order of a span inside `span_batches.spans` (and of the columns of the `spans` view).
SPAN_FIELDS = ("span_id", "parent_span_id", "name", "kind", "start_ns", "end_ns", "status", "status_message",
               "attributes", "events")


# Schema -------------------------------------------------------------------------------------
migrations = Migrations("telemetry")


@migrations()
def m001_spans(db: sqlite_utils.Database) -> None:
    db.execute("""CREATE TABLE spans (
        trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
        kind TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status TEXT NOT NULL,
        status_message TEXT, attributes TEXT NOT NULL, events TEXT NOT NULL)""")
    db.execute("CREATE INDEX spans_trace ON spans(trace_id)")
    db.execute("CREATE INDEX spans_start ON spans(start_ns)")
    db.execute("""CREATE VIEW turns AS SELECT
        datetime(start_ns / 1000000000, 'unixepoch') AS started_utc, substr(trace_id, 1, 8) AS ref,
        json_extract(attributes, '$."chat.id"') AS chat_id, status, (end_ns - start_ns) / 1e6 AS duration_ms,
        trace_id FROM spans WHERE parent_span_id IS NULL AND name = 'turn'""")


_IS_ROOT = "parent_span_id IS NULL"
_IS_CALL = "name LIKE 'chat %' AND json_extract(attributes, '$.\"gen_ai.request.model\"') IS NOT NULL"


@migrations()
def m002_span_batches(db: sqlite_utils.Database) -> None:
    # A row per span cost an index insert per span: most of tracing's CPU per turn.
    db.execute("""CREATE TABLE span_batches (
        trace_id TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, span_count INTEGER NOT NULL,
        root_name TEXT, root_start_ns INTEGER, root_end_ns INTEGER, root_status TEXT, chat_id INTEGER,
        llm_calls TEXT, spans TEXT NOT NULL)""")
    db.execute("CREATE INDEX span_batches_trace ON span_batches(trace_id)")
    db.execute("CREATE INDEX span_batches_start ON span_batches(start_ns)")
    db.execute("CREATE INDEX span_batches_roots ON span_batches(root_start_ns) WHERE root_name IS NOT NULL")
    root = f"max(CASE WHEN {_IS_ROOT} THEN {{}} END)"
    db.execute(f"""INSERT INTO span_batches SELECT trace_id, min(start_ns), max(end_ns), count(*),
        {root.format('name')}, {root.format('start_ns')}, {root.format('end_ns')}, {root.format('status')},
        {root.format('json_extract(attributes, ' + repr('$."chat.id"') + ')')},
        CASE WHEN count(*) FILTER (WHERE {_IS_CALL}) > 0 THEN json_group_array(json_array(
            json_extract(attributes, '$."gen_ai.request.model"'), start_ns, end_ns - start_ns, status))
            FILTER (WHERE {_IS_CALL}) END,
        json_group_array(json_array({", ".join(
            f"json({field})" if field in ("attributes", "events") else field for field in SPAN_FIELDS)}))
        FROM (SELECT * FROM spans ORDER BY rowid) GROUP BY trace_id""")
    db.execute("DROP VIEW turns")
    db.execute("DROP TABLE spans")
    # For people browsing the file (Datasette); the code reads span_batches.
    columns = ", ".join(f"json_extract(s.value, '$[{i}]') AS {field}" for i, field in enumerate(SPAN_FIELDS))
    db.execute(f"CREATE VIEW spans AS SELECT b.trace_id, {columns} FROM span_batches b, json_each(b.spans) s")
    db.execute("""CREATE VIEW turns AS SELECT
        datetime(root_start_ns / 1000000000, 'unixepoch') AS started_utc, substr(trace_id, 1, 8) AS ref,
        chat_id, root_status AS status, (root_end_ns - root_start_ns) / 1e6 AS duration_ms, trace_id
        FROM span_batches WHERE root_name = 'turn'""")
