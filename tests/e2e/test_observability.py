"""Observability end to end: one trace per turn, from the Telegram update through the LLM call
to the reply, looked up the way an operator does (CLI, `/trace`, `/status`) in the real process.

Spans reach telemetry.db in batches (every 500 ms, off the turn's path), so the tests poll the
CLI until the turn's root span is there instead of sleeping: the root ends last, and a batch
processor exports in the order spans end, so once the root is stored the whole turn is.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import OPERATOR_ID, SQLITE_ONLY, run_cli
from tests.fakes.llm_api import Error, Reply, _content_text

pytestmark = pytest.mark.e2e
USER = 100
MODEL_SPAN = "chat gpt-4o-mini"
JSON_KEYS = {"trace_id", "span_id", "parent_span_id", "name", "start", "end", "status", "attributes"}
STAGES = ("receive", "validate", "authorize", "throttle", "ingest", "context", "budget", "llm", "persist",
          "reply")
GEN_AI_KEYS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
               "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons",
               "gen_ai.conversation.id")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
REF = re.compile(r"ref: ([0-9a-f]{8})\b")
Span = dict[str, Any]


# Helpers ------------------------------------------------------------------------------------
def traceparent_of(request) -> tuple[str, str]:  # noqa: ANN001 - a RecordedRequest
    """(trace id, parent span id) of the W3C header the LLM stand-in received."""
    header = request.header("traceparent") or ""
    match = TRACEPARENT.fullmatch(header)
    assert match, f"the LLM request carried no valid traceparent header: {header!r}"
    return match.group(1), match.group(2)


def has_root(spans: list[Span]) -> bool:
    return any(s["name"] == "turn" and s["parent_span_id"] is None for s in spans)


def wait_for_trace(env: Mapping[str, str], ref: str, *, ready: Callable[[list[Span]], bool] = has_root,
                   timeout: float = 15.0) -> list[Span]:
    """`python -m bot trace REF --json`, polled until the exported spans satisfy `ready`."""
    deadline = time.monotonic() + timeout
    while True:
        result = run_cli(env, "trace", ref, "--json", timeout=30)
        spans = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and ready(spans):
            return spans
        if time.monotonic() >= deadline:
            raise AssertionError(f"trace {ref} not exported within {timeout:.0f}s: rc={result.returncode} "
                                 f"stderr={result.stderr.strip()!r} spans={[s.get('name') for s in spans]}")
        time.sleep(0.2)


def by_name(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s["name"] == name]


def one(spans: list[Span], name: str) -> Span:
    found = by_name(spans, name)
    assert len(found) == 1, f"expected one {name!r} span, got {len(found)}: {[s['name'] for s in spans]}"
    return found[0]


def root_of(spans: list[Span]) -> Span:
    roots = [s for s in spans if s["parent_span_id"] is None]
    assert len(roots) == 1 and roots[0]["name"] == "turn", [(s["name"], s["parent_span_id"]) for s in roots]
    return roots[0]


def assert_one_tree(spans: list[Span], trace_id: str) -> None:
    """Every span is in `trace_id`, has exactly the contract's keys, and hangs off one root."""
    assert spans, "no spans"
    for span in spans:
        assert set(span) == JSON_KEYS, f"span {span.get('name')} has keys {sorted(span)}"
        assert span["trace_id"] == trace_id, (span["name"], span["trace_id"], trace_id)
    ids = {s["span_id"] for s in spans}
    assert len(ids) == len(spans), "duplicate span ids"
    root_of(spans)
    dangling = [s["name"] for s in spans if s["parent_span_id"] is not None and s["parent_span_id"] not in ids]
    assert not dangling, f"spans whose parent is not in the trace: {dangling}"


def log_lines_with(output: str, trace_id: str) -> list[str]:
    return [line for line in output.splitlines() if f"trace={trace_id}" in line]


def user_text_of(request) -> str:  # noqa: ANN001 - a RecordedRequest
    users = [m for m in request.messages if m.get("role") == "user"]
    return _content_text(users[-1].get("content")) if users else ""


# One turn, every stage ----------------------------------------------------------------------
def test_a_message_is_one_trace_from_update_to_reply(bot, fake_telegram, fake_llm) -> None:
    proc = bot()
    env = bot.env()
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "hello observability"))
    fake_telegram.wait_for_text(USER, "echo: hello observability", timeout=20)
    trace_id, llm_parent = traceparent_of(fake_llm.last_request())
    ref = trace_id[:8]

    spans = wait_for_trace(env, ref, ready=lambda s: has_root(s) and bool(by_name(s, "send")))
    assert_one_tree(spans, trace_id)
    root = root_of(spans)
    assert root["attributes"]["chat.id"] == USER and root["attributes"]["user.id"] == USER
    assert root["attributes"]["turn.outcome"] == "replied" and root["status"] != "ERROR"
    for stage in STAGES:  # each stage once, directly under the turn
        assert one(spans, stage)["parent_span_id"] == root["span_id"], stage
    reply = one(spans, "reply")
    for name in ("render", "send"):  # the Telegram channel's part of the reply
        assert one(spans, name)["parent_span_id"] == reply["span_id"], name
    assert one(spans, "send")["attributes"]["chat.id"] == USER

    chat = one(spans, MODEL_SPAN)
    assert chat["parent_span_id"] == one(spans, "llm")["span_id"]
    attributes = chat["attributes"]
    assert all(key in attributes for key in GEN_AI_KEYS), sorted(attributes)
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.conversation.id"] == str(USER)
    assert "error.type" not in attributes and chat["status"] != "ERROR"
    # The outbound HTTP request was made inside the model span: a tracing proxy joins the trace there.
    assert llm_parent == chat["span_id"]

    # Log lines written during the turn carry its trace id; nothing about this chat is logged without it.
    output = proc.output()
    lines = log_lines_with(output, trace_id)
    assert any(f"turn {ref}: replied" in line for line in lines), "\n".join(lines[-10:])
    chat_lines = [line for line in output.splitlines() if "'chat_id': 100" in line and "endpoint `send" in line]
    assert chat_lines and all(f"trace={trace_id}" in line for line in chat_lines), chat_lines

    recent = run_cli(env, "traces", "--last", "5")
    assert recent.returncode == 0 and ref in recent.stdout, recent.stdout + recent.stderr
    assert any(ref in line and str(USER) in line for line in recent.stdout.splitlines()), recent.stdout

    # The operator reads the same trace in Telegram; nobody else may.
    fake_telegram.push_update(fake_telegram.text_update(OPERATOR_ID, OPERATOR_ID, f"/trace {ref}"))
    tree = fake_telegram.wait_for_text(OPERATOR_ID, MODEL_SPAN, timeout=15).plain_text
    assert re.search(r"^turn\s", tree, re.MULTILINE) and "\n  reply" in tree and "\n    send" in tree, tree
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, f"/trace {ref}"))
    refusal = fake_telegram.wait_for_text(USER, "operator only", timeout=15).plain_text
    assert MODEL_SPAN not in refusal

    # The scoreboard: turns and their latency percentiles per model, for the operator.
    fake_telegram.push_update(fake_telegram.text_update(OPERATOR_ID, OPERATOR_ID, "/status"))
    status = fake_telegram.wait_for_text(OPERATOR_ID, "Turns 24h", timeout=15).plain_text
    assert re.search(r"Turns 24h gpt-4o-mini: 1 \(0 failed\), p50 \d+ / p95 \d+ / p99 \d+ ms", status), status


# Failures and retries -----------------------------------------------------------------------
def test_retries_are_span_events_and_failures_carry_their_type(bot, fake_telegram, fake_llm) -> None:
    bot(RETRY_WAIT_SCALE=0)
    env = bot.env()
    fake_llm.enqueue(Error.server_error())  # the first attempt fails, the retry answers
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "retry me"))
    fake_telegram.wait_for_text(USER, "echo: retry me", timeout=20)
    first, second = fake_llm.completions()[-2:]
    trace_id, first_parent = traceparent_of(first)
    assert traceparent_of(second)[0] == trace_id and traceparent_of(second)[1] != first_parent

    spans = wait_for_trace(env, trace_id[:8])
    assert_one_tree(spans, trace_id)
    attempts = {s["span_id"]: s for s in by_name(spans, MODEL_SPAN)}
    assert len(attempts) == 2
    failed, answered = attempts[first_parent], attempts[traceparent_of(second)[1]]
    assert failed["status"] == "ERROR" and failed["attributes"]["error.type"] == "InternalServerError"
    assert failed["attributes"]["http.response.status_code"] == 500
    assert "error.type" not in answered["attributes"] and answered["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert root_of(spans)["attributes"]["turn.outcome"] == "replied"
    tree = run_cli(env, "trace", trace_id)  # events are shown in the tree (the --json contract has none)
    assert tree.returncode == 0, tree.stderr
    retry_lines = [line for line in tree.stdout.splitlines() if "· retry" in line]
    assert len(retry_lines) == 1 and "retry.attempt=1" in retry_lines[0] and "llm_server" in retry_lines[0], \
        tree.stdout

    # A turn that fails for good: the user's ref leads to the failed trace.
    fake_llm.enqueue(Error.invalid_api_key())  # not retryable: one attempt, DLQ, alert
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, "this one fails"))
    error_reply = fake_telegram.wait_for_text(USER, "ref: ", timeout=20).plain_text
    ref = REF.search(error_reply).group(1)
    assert traceparent_of(fake_llm.last_request())[0].startswith(ref)
    spans = wait_for_trace(env, ref)
    trace_id = spans[0]["trace_id"]
    assert trace_id.startswith(ref)
    assert_one_tree(spans, trace_id)
    root = root_of(spans)
    assert root["status"] == "ERROR" and root["attributes"]["error.type"] == "llm_auth"
    chat = one(spans, MODEL_SPAN)
    assert chat["status"] == "ERROR" and chat["attributes"]["error.type"] == "AuthenticationError"
    assert one(spans, "failure")["attributes"]["error.type"] == "llm_auth"
    assert one(spans, "llm")["status"] == "ERROR"
    # The operator's alert quotes the same ref.
    fake_telegram.wait_for_text(OPERATOR_ID, f"ref: {ref}", timeout=15)


# Concurrency --------------------------------------------------------------------------------
def test_concurrent_chats_get_separate_traces(bot, fake_telegram, fake_llm) -> None:
    bot()
    env = bot.env()
    users = (100, 101, 102)

    def slow_echo(body: dict[str, Any]) -> Reply:  # long enough that every turn overlaps the others
        last = next(m for m in reversed(body["messages"]) if m.get("role") == "user")
        return Reply("echo: " + _content_text(last.get("content")), chunk_chars=6, delay_s=0.08)

    fake_llm.set_default(slow_echo)
    for user in users:
        fake_telegram.push_update(fake_telegram.text_update(user, user, f"question from {user}"))
    for user in users:
        fake_telegram.wait_for_text(user, f"echo: question from {user}", timeout=20)

    trace_of: dict[int, str] = {}
    for request in fake_llm.completions():
        user = int(user_text_of(request).rsplit(" ", 1)[1])
        trace_of[user] = traceparent_of(request)[0]
    assert sorted(trace_of) == list(users) and len(set(trace_of.values())) == len(users), trace_of

    windows = []
    for user, trace_id in trace_of.items():
        spans = wait_for_trace(env, trace_id, ready=lambda s: has_root(s) and bool(by_name(s, "send")))
        assert_one_tree(spans, trace_id)
        for span in spans:  # every span that names a chat or a user names this one
            for key in ("chat.id", "user.id"):
                assert span["attributes"].get(key, user) == user, (user, span["name"], key, span["attributes"])
        chat = one(spans, MODEL_SPAN)
        assert chat["attributes"]["gen_ai.conversation.id"] == str(user)
        request = next(r for r in fake_llm.completions() if traceparent_of(r)[1] == chat["span_id"])
        assert user_text_of(request) == f"question from {user}"
        windows.append((chat["start"], chat["end"]))
    # The turns really ran at the same time (else this test would prove nothing).
    latest_start, earliest_end = max(w[0] for w in windows), min(w[1] for w in windows)
    assert latest_start < earliest_end, windows


# The exporter failing never fails a turn -----------------------------------------------------
def _turn_ok(fake_telegram, text: str, *, timeout: float = 10.0) -> float:  # noqa: ANN001
    started = time.monotonic()
    fake_telegram.push_update(fake_telegram.text_update(USER, USER, text))
    fake_telegram.wait_for_text(USER, f"echo: {text}", timeout=timeout)
    return time.monotonic() - started


@SQLITE_ONLY
def test_a_locked_telemetry_db_does_not_fail_the_turn(bot, fake_telegram, fake_llm, data_dir: Path) -> None:
    """SQLite only: about telemetry.db's file lock held by another process."""
    proc = bot()
    env = bot.env()
    _turn_ok(fake_telegram, "before the lock")
    wait_for_trace(env, traceparent_of(fake_llm.last_request())[0])  # telemetry.db exists, spans flow

    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:  # another process's writer holding the database for a while
        conn = sqlite3.connect(data_dir / "telemetry.db", isolation_level=None, timeout=5)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(30)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    try:
        assert locked.wait(10)
        elapsed = _turn_ok(fake_telegram, "while it is locked")
        assert elapsed < 5, f"the turn waited on the locked telemetry database ({elapsed:.1f}s)"
        proc.wait_for_output("telemetry: dropped", timeout=10)  # the exporter gave up on that batch
    finally:
        release.set()
        holder.join(10)
    _turn_ok(fake_telegram, "after the lock")  # and spans flow again once the lock is gone
    wait_for_trace(env, traceparent_of(fake_llm.last_request())[0])


@SQLITE_ONLY
def test_an_unusable_telemetry_path_does_not_fail_the_turn(bot, fake_telegram, fake_llm, data_dir: Path) -> None:
    """SQLite only: about the telemetry.db file under DATA_DIR being unusable."""
    (data_dir / "telemetry.db").mkdir()  # SQLite cannot open a directory: every export fails
    proc = bot()
    for text in ("first", "second"):
        assert _turn_ok(fake_telegram, text) < 5
    proc.wait_for_output("telemetry: dropped", timeout=10)
    listed = run_cli(bot.env(), "traces", "--last", "5")
    assert listed.returncode == 0 and "no turns recorded yet" in listed.stdout, listed.stdout + listed.stderr
    fake_telegram.push_update(fake_telegram.text_update(OPERATOR_ID, OPERATOR_ID, "/status"))
    status = fake_telegram.wait_for_text(OPERATOR_ID, "Turns 24h: none yet", timeout=15).plain_text
    assert re.search(r"\(\d+ spans not stored", status), status  # the operator sees that tracing is degraded
    assert proc.alive()


# JSON logs ----------------------------------------------------------------------------------
def test_json_logs_are_one_object_per_line_with_the_trace_id(bot, fake_telegram, fake_llm) -> None:
    proc = bot(LOG_FORMAT="json")
    _turn_ok(fake_telegram, "json please")
    trace_id = traceparent_of(fake_llm.last_request())[0]
    proc.wait_for_output(f"turn {trace_id[:8]}: replied", timeout=10)
    events = []
    for line in proc.output().splitlines():
        event = json.loads(line)  # every line is one JSON object, nothing else on stdout
        assert isinstance(event, dict) and {"time", "level", "logger", "message", "trace_id"} <= set(event), line
        events.append(event)
    in_turn = [e for e in events if e["trace_id"] == trace_id]
    assert any(e["logger"] == "core.pipeline" and e["message"].startswith(f"turn {trace_id[:8]}: replied")
               for e in in_turn), in_turn
    sends = [e for e in events if "'chat_id': 100" in e["message"] and "endpoint `send" in e["message"]]
    assert sends and all(e["trace_id"] == trace_id for e in sends)
